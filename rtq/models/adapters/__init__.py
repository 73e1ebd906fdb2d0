"""Adapters for detectors that exist only as ONNX: their pre- and post-processing as a `DetectorIO`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtq.errors import UserError
from rtq.models.adapters.rfdetr import RfdetrIO
from rtq.models.adapters.yolox import YoloxIO
from rtq.models.io import DetectorIO

ADAPTERS: dict[str, type] = {"rfdetr": RfdetrIO, "yolox": YoloxIO}


def build_adapter(name: str, **options: Any) -> DetectorIO:
    """The `DetectorIO` registered as `name`, configured with `options` (model.adapter_options)."""
    if name not in ADAPTERS:
        raise UserError(f"unknown detector adapter {name!r}; set model.adapter to one of {sorted(ADAPTERS)}")
    try:
        io: DetectorIO = ADAPTERS[name](**options)
    except TypeError as err:
        raise UserError(f"bad model.adapter_options for {name!r}: {err}") from err
    return io


def check_graph(io: DetectorIO, path: str | Path) -> None:
    """Fail in one line when the ONNX at `path` lacks the I/O the adapter `io` expects (if it checks)."""
    check = getattr(io, "check_graph", None)
    if check is not None:
        import onnx

        check(onnx.load(str(path), load_external_data=False), repr(str(path)))


def node_groups(name: str, model: Any) -> dict[str, Any]:
    """Named node groups of an adapter's ONNX graph (for sensitivity); see each adapter's module."""
    if name == "yolox":
        from rtq.models.adapters.yolox_groups import yolox_node_groups

        return yolox_node_groups(model)
    if name == "rfdetr":
        from rtq.models.adapters.rfdetr_groups import rfdetr_node_groups

        return rfdetr_node_groups(model)
    raise UserError(f"adapter {name!r} defines no node groups for sensitivity")


__all__ = ["ADAPTERS", "RfdetrIO", "YoloxIO", "build_adapter", "check_graph", "node_groups"]
