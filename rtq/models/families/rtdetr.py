"""RT-DETRv2 in torch (rtq's own implementation, official checkpoints)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rtq.models.family import Detector, DetectorFamily, Source
from rtq.models.rtdetr import RTDETRIO, RawOutputs, raw_network


class RTDETRFamily(DetectorFamily):
    """RT-DETRv2 variants of `rtq.models.registry`, built as the deploy model (BatchNorm folded)."""

    name: ClassVar[str] = "rtdetr"
    source: ClassVar[Source] = "torch"

    def load(self, model_cfg: Mapping[str, Any]) -> Detector:
        from rtq.models.build import build_deploy_model
        from rtq.models.checkpoint_sources import resolve_checkpoint
        from rtq.models.registry import get_variant

        name = str(model_cfg["name"])
        get_variant(name)  # an unknown name fails before any download
        mirror = model_cfg.get("checkpoint_mirror")  # optional: +model.checkpoint_mirror=URL
        resolved = resolve_checkpoint(model_cfg.get("checkpoint"), name, str(mirror) if mirror else None)
        model = build_deploy_model(name, resolved.path if resolved else None)
        io = RTDETRIO(int(model_cfg.get("input_size", 640)))
        settings = dict(model_cfg)
        if resolved is not None:  # the local file or folder the weights were read from
            settings["checkpoint"] = str(resolved.path)
        weights = resolved.label if resolved else "random"
        return Detector(name, self, io, torch_model=model, weights=weights, settings=settings)

    def export(self, detector: Detector, model: Any, out: Path, opset: int, simplify: bool) -> Path:
        from rtq.export.onnx_export import export_onnx

        return export_onnx(model, out, image_size=detector.io.input_size, opset=opset, simplify=simplify)

    def raw_outputs(self, model: Any) -> Any:
        return RawOutputs(raw_network(model))

    def quant_groups(self, detector: Detector) -> dict[str, Any]:
        return rtdetr_module_groups(detector.torch_model)

    def graph_feeds(self, graph: Any, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return RTDETRIO(graph_input_side(graph)).preprocess(list(images))[0]


def graph_input_side(graph: Any, default: int = 640) -> int:
    """The square input side of an exported graph's `images` input (its last dim), else `default`."""
    for info in graph.graph.input:
        if info.name == "images":
            dims = info.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[3].HasField("dim_value"):
                return int(dims[3].dim_value)
    return default


def rtdetr_module_groups(model: Any) -> dict[str, str]:
    """Module-glob groups of an RT-DETR model: backbone stages, encoder parts, decoder layers.

    Read from the model's own module names, so r18vd (3 decoder layers) and r50vd (6) both work.
    `model` is the network or its deploy wrapper; the globs match either way (`model.backbone...`
    in the wrapper), since each is used as a recipe exclusion `<glob>.*_quantizer`.
    """
    names = [name for name, _ in raw_network(model).named_modules() if name]
    groups: dict[str, str] = {}

    def add_children(prefix: str, label: str) -> None:
        children = sorted(
            {n[len(prefix) + 1 :].split(".")[0] for n in names if n.startswith(prefix + ".")},
            key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c),
        )
        for child in children:
            groups[f"{label}.{child}"] = f"{prefix}.{child}"

    for top in sorted({n.split(".")[0] for n in names}):
        if top == "decoder" and any(n.startswith("decoder.decoder.layers.") for n in names):
            add_children("decoder.decoder.layers", "decoder.layer")
            rest = {n.split(".")[1] for n in names if n.startswith("decoder.") and n.count(".") >= 1}
            for part in sorted(rest - {"decoder"}):
                groups[f"decoder.{part}"] = f"decoder.{part}"
        elif top == "backbone" and any(n.startswith("backbone.res_layers.") for n in names):
            add_children("backbone.res_layers", "backbone.stage")
            for part in sorted(
                {n.split(".")[1] for n in names if n.startswith("backbone.")} - {"res_layers"}
            ):
                groups[f"backbone.{part}"] = f"backbone.{part}"
        elif top == "encoder":
            add_children("encoder", "encoder")
        else:
            groups[top] = top
    return {label: f"*{glob}" for label, glob in groups.items()}
