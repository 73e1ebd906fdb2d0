"""Adapters for detectors that exist only as ONNX: their pre- and post-processing as a `DetectorIO`."""

from __future__ import annotations

from typing import Any

from rtq.errors import UserError
from rtq.models.adapters.yolox import YoloxIO
from rtq.models.io import DetectorIO

ADAPTERS: dict[str, type] = {"yolox": YoloxIO}


def build_adapter(name: str, **options: Any) -> DetectorIO:
    """The `DetectorIO` registered as `name`, configured with `options` (model.adapter_options)."""
    if name not in ADAPTERS:
        raise UserError(f"unknown detector adapter {name!r}; set model.adapter to one of {sorted(ADAPTERS)}")
    try:
        io: DetectorIO = ADAPTERS[name](**options)
    except TypeError as err:
        raise UserError(f"bad model.adapter_options for {name!r}: {err}") from err
    return io


__all__ = ["ADAPTERS", "YoloxIO", "build_adapter"]
