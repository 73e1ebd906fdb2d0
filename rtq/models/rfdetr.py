"""RF-DETR (the transformers implementation): named presets, the deploy module and its ONNX export.

transformers ships one configuration (the original "base" layout); the presets here are the
published RF-DETR sizes (Roboflow's `rfdetr` package: resolution, patch size, windows, decoder
depth, backbone feature layers), all on a windowed DINOv2-S backbone with 91 class logits (index =
COCO category id). The deploy module is `images -> (boxes, logits)`, or with `contract="rfdetr"`
the I/O of the `rfdetr` package's own ONNX export (`input -> dets, labels`): the same tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rtq.errors import UserError

log = logging.getLogger("rtq")

NUM_LOGITS = 91  # COCO category ids 1..90 plus index 0, as RF-DETR's class head

Contract = Literal["rtq", "rfdetr"]
# (input names, output names) of each deploy I/O contract
CONTRACTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rtq": (("images",), ("boxes", "logits")),
    "rfdetr": (("input",), ("dets", "labels")),
}
# the fixes a deploy export applies: the position embeddings are folded for the input size
DEFAULT_FIXES = ("fold_position_embeddings",)


@dataclass(frozen=True)
class RfDetrPreset:
    """One published RF-DETR size (all use a windowed DINOv2-S backbone, 256-wide decoder)."""

    resolution: int  # square input side the size was trained at
    patch_size: int
    positional_encoding_size: int  # side of the learned position-embedding grid
    num_windows: int
    decoder_layers: int
    out_indices: tuple[int, ...]  # backbone layers feeding the projector
    num_queries: int = 300


PRESETS: dict[str, RfDetrPreset] = {
    "nano": RfDetrPreset(384, 16, 24, 2, 2, (3, 6, 9, 12)),
    "small": RfDetrPreset(512, 16, 32, 2, 3, (3, 6, 9, 12)),
    "medium": RfDetrPreset(576, 16, 36, 2, 4, (3, 6, 9, 12)),
    "base": RfDetrPreset(560, 14, 37, 4, 3, (2, 5, 8, 11)),
}


def get_preset(name: str) -> RfDetrPreset:
    if name not in PRESETS:
        raise UserError(f"model.preset={name!r} is not an RF-DETR size; use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def check_resolution(preset: RfDetrPreset, resolution: int) -> int:
    """The resolution, or a one-line error: the patch grid must split evenly into the windows and
    hold at least `num_queries` tokens (the encoder selects that many)."""
    step = preset.patch_size * preset.num_windows
    tokens = (resolution // preset.patch_size) ** 2
    if resolution <= 0 or resolution % step:
        raise UserError(
            f"model.input_size={resolution} must be a positive multiple of {step} for this preset"
        )
    if tokens < preset.num_queries:
        sides = range(step, 100 * step, step)
        smallest = next(r for r in sides if (r // preset.patch_size) ** 2 >= preset.num_queries)
        raise UserError(
            f"model.input_size={resolution} gives {tokens} tokens, fewer than {preset.num_queries} queries; "
            f"use at least {smallest}"
        )
    return resolution


def rfdetr_config(preset: RfDetrPreset) -> Any:
    """The transformers `RfDetrConfig` of a preset (91 logits, 2 sampling points, 8/16 heads)."""
    from transformers import RfDetrConfig

    backbone = {
        "model_type": "rf_detr_dinov2",
        "hidden_size": 384,
        "num_attention_heads": 6,
        "num_hidden_layers": 12,
        "patch_size": preset.patch_size,
        "image_size": preset.positional_encoding_size * preset.patch_size,
        "num_windows": preset.num_windows,
        "out_features": [f"stage{i}" for i in preset.out_indices],
    }
    labels: dict[str, Any] = {"num_labels": NUM_LOGITS}  # a PreTrainedConfig keyword, not a field
    return RfDetrConfig(
        backbone_config=backbone,
        decoder_layers=preset.decoder_layers,
        decoder_n_points=2,
        decoder_self_attention_heads=8,
        decoder_cross_attention_heads=16,
        num_queries=preset.num_queries,
        **labels,
    )


def build_rfdetr(preset: str, checkpoint: str | Path | None = None, seed: int = 0) -> nn.Module:
    """`RfDetrForObjectDetection` in eval mode: random weights (seeded) or a local transformers folder."""
    from transformers import RfDetrForObjectDetection

    if checkpoint is not None:
        folder = Path(checkpoint)
        if not (folder / "config.json").is_file():
            raise UserError(
                f"model.checkpoint={folder} is not a transformers checkpoint folder (no config.json); "
                "point it at a folder written by save_pretrained"
            )
        return RfDetrForObjectDetection.from_pretrained(str(folder), local_files_only=True).eval()
    torch.manual_seed(seed)
    model = RfDetrForObjectDetection(rfdetr_config(get_preset(preset))).eval()
    spread_class_heads(model, seed)
    return model


def spread_class_heads(model: nn.Module, seed: int, std: float = 1.0) -> None:
    """Redraw the class heads' weights with a trained-like spread (std 1 instead of 0.02).

    transformers' init starts every class logit at the prior, so the encoder's scores differ by
    ~1e-7 between positions and its top-k picks queries by float noise: backends, batch sizes and
    INT8 would disagree through ties alone. With spread heads the input decides the selection.
    """
    generator = torch.Generator().manual_seed(seed)
    heads = [m for name, m in model.named_modules() if "class_embed" in name and isinstance(m, nn.Linear)]
    with torch.no_grad():
        for head in heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)


SELECTION_OUTPUT = "selected_proposals"


class RfDetrDeploy(nn.Module):
    """`images [N,3,S,S] (normalised) -> (boxes [N,Q,4] cxcywh in 0..1, logits [N,Q,91])`.

    `selection=True` adds the encoder's selected proposals [N,Q,4] in rank order as a third output:
    two runs that picked the same queries in the same order agree on it exactly, which is how a
    parity check tells a top-k near-tie from an export error (see `selection_margins`).
    """

    def __init__(
        self, model: nn.Module, resolution: int, contract: Contract = "rtq", selection: bool = False
    ) -> None:
        super().__init__()
        if contract not in CONTRACTS:
            raise UserError(f"deploy contract {contract!r} is not known; use one of: {', '.join(CONTRACTS)}")
        self.model = model.eval()
        self.resolution = resolution
        self.contract = contract
        self.selection = selection

    @property
    def input_names(self) -> tuple[str, ...]:
        return CONTRACTS[self.contract][0]

    @property
    def output_names(self) -> tuple[str, ...]:
        return CONTRACTS[self.contract][1] + ((SELECTION_OUTPUT,) if self.selection else ())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(pixel_values=images)
        if self.selection:
            return out.pred_boxes, out.logits, out.enc_outputs_coord_logits
        return out.pred_boxes, out.logits


def export_rfdetr_onnx(
    deploy: RfDetrDeploy,
    path: str | Path,
    opset: int = 17,
    simplify: bool = False,
    fixes: tuple[str, ...] | list[str] = DEFAULT_FIXES,
    contract: Contract | None = None,
) -> Path:
    """Export the deploy module with a symbolic batch, the export fixes applied during the trace.

    `contract="rfdetr"` writes the `rfdetr` package's I/O: `input` [N,3,S,S] -> `dets` [N,Q,4]
    (cxcywh, normalised) and `labels` [N,Q,91] (logits); the default is the deploy module's own.
    """
    from rtq.export.export_fixes import applied_fixes
    from rtq.export.onnx_export import EXAMPLE_BATCH, export_module

    inputs, outputs = CONTRACTS[contract or deploy.contract]
    names = (inputs, outputs + deploy.output_names[len(outputs) :])
    side = deploy.resolution
    images = torch.rand(EXAMPLE_BATCH, 3, side, side, generator=torch.Generator().manual_seed(0))
    with applied_fixes(deploy, (side, side), list(fixes)) as report:
        out = export_module(deploy, (images,), Path(path), names, opset, True, simplify)
    for line in report.lines():
        log.info("export fix %s", line)
    config: Any = deploy.model.config
    queries = int(config.num_queries)
    widths = {names[1][0]: 4, names[1][1]: int(config.num_labels)}
    _static_query_dims(out, {name: (queries, widths.get(name, 4)) for name in names[1]})
    return out


def _static_query_dims(path: Path, dims: dict[str, tuple[int, int]]) -> None:
    """Write the query and class dims of the outputs as numbers: the tracer leaves the query count
    symbolic after the top-k, while consumers of the graph expect [N, Q, C] with Q and C known."""
    import onnx

    from rtq.files import atomic_target

    proto = onnx.load(str(path))
    for value in proto.graph.output:
        shape = value.type.tensor_type.shape.dim
        for axis, size in zip((1, 2), dims[value.name], strict=True):
            shape[axis].Clear()
            shape[axis].dim_value = size
    with atomic_target(path) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


@dataclass(frozen=True)
class Parity:
    """Two runs of a selection-output model: which images picked the same queries, and the largest
    box and logit differences over those images."""

    same_selection: tuple[bool, ...]
    max_box_error: float
    max_logit_error: float

    @property
    def matched(self) -> int:
        return sum(self.same_selection)


def parity(reference: Sequence[Any], target: Sequence[Any], selection_tol: float = 1e-5) -> Parity:
    """Compare (boxes, logits, selected proposals) of two runs image by image.

    The encoder ranks its queries by top-k and each rank has its own learned query, so scores closer
    than a backend's arithmetic noise may swap and change every output of that image; random
    weights make such near-ties common. Images whose selections differ are counted, not compared.
    """
    boxes, logits, chosen = (np.asarray(v) for v in reference)
    got_boxes, got_logits, got_chosen = (np.asarray(v) for v in target)
    same = tuple(bool(np.abs(chosen[i] - got_chosen[i]).max() <= selection_tol) for i in range(len(chosen)))
    rows = [i for i, ok in enumerate(same) if ok]
    box_err = max((float(np.abs(boxes[i] - got_boxes[i]).max()) for i in rows), default=float("nan"))
    logit_err = max((float(np.abs(logits[i] - got_logits[i]).max()) for i in rows), default=float("nan"))
    return Parity(same, box_err, logit_err)
