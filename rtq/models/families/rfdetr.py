"""RF-DETR (transformers implementation) as a detector family: a named preset at a square input size.

The network ends at raw `boxes` (cxcywh, 0..1) and `logits` (91 per query); top-k and the mapping
to original pixels happen on the host (`RfDetrIO`), like YOLOX, so graphs stay free of data-dependent
top-k and the comparison sees the raw outputs. Export applies `model.export_fixes` (default: fold
the DINOv2 position embeddings for the input size, which the exporter cannot convert otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rtq.models.family import Detector, DetectorFamily, Source
from rtq.models.onnx_source import tensor_dims
from rtq.models.rfdetr import DEFAULT_FIXES, RfDetrDeploy, check_resolution, get_preset
from rtq.models.rfdetr_io import RfDetrIO


class RfDetrFamily(DetectorFamily):
    """`model.preset` (nano/small/medium/base), `model.input_size`, optional `model.checkpoint`."""

    name: ClassVar[str] = "rfdetr"
    source: ClassVar[Source] = "torch"

    def load(self, model_cfg: Mapping[str, Any]) -> Detector:
        from rtq.models.rfdetr import build_rfdetr

        preset_name = str(model_cfg.get("preset", "nano"))
        preset = get_preset(preset_name)
        side = check_resolution(preset, int(model_cfg.get("input_size") or preset.resolution))
        checkpoint = model_cfg.get("checkpoint")
        network = build_rfdetr(preset_name, checkpoint, seed=int(model_cfg.get("seed", 0)))
        deploy = RfDetrDeploy(network, side)
        io = RfDetrIO(input_size=side, top_k=int(model_cfg.get("top_k", 300)))
        weights = Path(str(checkpoint)).name if checkpoint else "random"
        name = str(model_cfg.get("name", f"rfdetr_{preset_name}"))
        return Detector(name, self, io, torch_model=deploy, weights=weights, settings=dict(model_cfg))

    def export(self, detector: Detector, model: Any, out: Path, opset: int, simplify: bool) -> Path:
        from rtq.models.rfdetr import export_rfdetr_onnx

        fixes = list(detector.settings.get("export_fixes") or DEFAULT_FIXES)
        return export_rfdetr_onnx(model, out, opset=opset, simplify=simplify, fixes=fixes)

    def graph_feeds(self, graph: Any, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        info = graph.graph.input[0]
        dims = tensor_dims(info)
        side = dims[3] if len(dims) == 4 and isinstance(dims[3], int) else 384
        return RfDetrIO(input_size=side, input_names=(info.name,)).preprocess(list(images))[0]
