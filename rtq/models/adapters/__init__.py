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


def node_groups(name: str, model: Any) -> dict[str, Any]:
    """Named node groups of an adapter's ONNX graph (for sensitivity); see each adapter's module."""
    if name == "yolox":
        from rtq.models.adapters.yolox_groups import yolox_node_groups

        return yolox_node_groups(model)
    raise UserError(f"adapter {name!r} defines no node groups for sensitivity")


__all__ = ["ADAPTERS", "YoloxIO", "build_adapter", "node_groups"]
