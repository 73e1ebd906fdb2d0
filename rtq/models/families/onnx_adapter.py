"""Detectors that exist only as an ONNX file, run through an adapter (YOLOX today)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rtq.errors import UserError
from rtq.models.family import Detector, DetectorFamily, Source


class OnnxAdapterFamily(DetectorFamily):
    """`model.onnx_path` + `model.adapter` (pre/post-processing of that export format)."""

    name: ClassVar[str] = "onnx"
    source: ClassVar[Source] = "onnx"

    def load(self, model_cfg: Mapping[str, Any]) -> Detector:
        from rtq.models.adapters import build_adapter, check_graph

        path = Path(str(model_cfg["onnx_path"]))
        if not path.is_file():
            raise UserError(f"model.onnx_path={path} does not exist; point it at the detector's ONNX file")
        options = dict(model_cfg.get("adapter_options") or {})
        io = build_adapter(str(model_cfg["adapter"]), **options)
        check_graph(io, path)  # a file without the adapter's I/O fails here, in one line
        return Detector(
            str(model_cfg["name"]), self, io, source_onnx=path, weights=path.name, settings=dict(model_cfg)
        )

    def export(self, detector: Detector, model: Any, out: Path, opset: int, simplify: bool) -> Path:
        from rtq.models.onnx_source import dynamic_batch_onnx

        if detector.source_onnx is None:
            raise UserError(f"{detector.name} has no source ONNX; set model.onnx_path")
        return dynamic_batch_onnx(detector.source_onnx, out)[0]

    def quant_groups(self, detector: Detector) -> dict[str, Any]:
        import onnx

        from rtq.models.adapters import node_groups

        if detector.source_onnx is None:
            raise UserError(f"{detector.name} has no source ONNX; set model.onnx_path")
        return node_groups(str(detector.settings["adapter"]), onnx.load(str(detector.source_onnx)))

    def graph_feeds(self, graph: Any, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        raise UserError("ONNX-adapter graphs take their feeds from the adapter (detector.io.preprocess)")
