"""Top-level RT-DETRv2 module, its deploy and raw-output wrappers, and the `DetectorIO` that feeds it.

`RTDETR` registers its children in the official order (backbone, decoder, encoder) so that
`state_dict()` lists keys exactly like the released checkpoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from rtq.errors import UserError
from rtq.models.decoder import RTDETRTransformerv2
from rtq.models.io import DETECTION_INPUTS, DETECTION_OUTPUTS, Detections, ImageMeta
from rtq.models.postprocess import RTDETRPostProcessor


class RTDETR(nn.Module):
    """Backbone -> HybridEncoder -> decoder; returns raw `pred_logits` and `pred_boxes` (cx,cy,w,h)."""

    def __init__(self, backbone: nn.Module, encoder: nn.Module, decoder: RTDETRTransformerv2) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        expected = self.decoder.eval_spatial_size
        if expected is not None and not torch.jit.is_tracing() and tuple(images.shape[2:]) != tuple(expected):
            raise ValueError(
                f"images are {tuple(images.shape[2:])} but the anchors of this model are built for "
                f"{tuple(expected)}; resize images to that size"
            )
        return self.decoder(self.encoder(self.backbone(images)))

    def deploy(self) -> RTDETR:
        """Eval mode with every RepVGG block fused into one conv (what gets exported)."""
        self.eval()
        for module in self.modules():
            convert = getattr(module, "convert_to_deploy", None)
            if callable(convert):
                convert()
        return self


class RTDETRDeploy(nn.Module):
    """Model + post-processor as one graph: `(images, orig_target_sizes) -> (labels, boxes, scores)`."""

    def __init__(self, model: RTDETR, postprocessor: RTDETRPostProcessor) -> None:
        super().__init__()
        self.model = model.deploy()
        self.postprocessor = postprocessor.deploy()

    def forward(
        self, images: torch.Tensor, orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.postprocessor.select(self.model(images), orig_target_sizes)


# The network before post-processing: logits and boxes of every query, and which memory
# positions the encoder's top-k picked as queries (so rows can be realigned across backends).
RAW_INPUT_NAMES = ("images",)
RAW_OUTPUT_NAMES = ("pred_logits", "pred_boxes", "enc_topk_index")


class RawOutputs(nn.Module):
    """`images -> (pred_logits, pred_boxes, enc_topk_index)` of an RT-DETR network.

    The network is registered as `model`, like in the deploy wrapper, so quantizer node names in
    the raw export (`/model/backbone/...`) are those of the deploy export.
    """

    input_names = RAW_INPUT_NAMES
    output_names = RAW_OUTPUT_NAMES

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.model = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.model(images)
        return outputs["pred_logits"], outputs["pred_boxes"], last_topk_index(self.model)


def last_topk_index(network: nn.Module) -> torch.Tensor:
    """The memory positions the decoder selected as queries in the network's last forward."""
    index = getattr(getattr(network, "decoder", None), "last_enc_topk_index", None)
    if not isinstance(index, torch.Tensor):
        raise RuntimeError("the network has not run a forward pass yet: no enc_topk_index to read")
    return index


def raw_network(model: nn.Module) -> nn.Module:
    """The RT-DETR network inside a deploy wrapper (or the network itself)."""
    for candidate in (model, getattr(model, "model", None)):
        decoder = getattr(candidate, "decoder", None) if candidate is not None else None
        if isinstance(candidate, nn.Module) and hasattr(decoder, "last_enc_topk_index"):
            return candidate
    raise UserError(
        f"{type(model).__name__} is not an RT-DETR network or deploy wrapper; raw outputs "
        "(pred_logits, pred_boxes, enc_topk_index) exist only for RT-DETR models"
    )


class RTDETRIO:
    """Official RT-DETR preprocessing: PIL bilinear resize to 640x640 (no aspect keep), RGB, /255."""

    input_size: int = 640
    input_names: tuple[str, ...] = DETECTION_INPUTS
    output_names: tuple[str, ...] = DETECTION_OUTPUTS

    def __init__(self, input_size: int = 640) -> None:
        self.input_size = input_size

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        batch = np.empty((len(images), 3, self.input_size, self.input_size), dtype=np.float32)
        sizes = np.empty((len(images), 2), dtype=np.int64)
        metas: list[ImageMeta] = []
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an RGB HWC image, got shape {image.shape}")
            height, width = image.shape[:2]
            resized = Image.fromarray(image.astype(np.uint8), "RGB").resize(
                (self.input_size, self.input_size), Image.Resampling.BILINEAR
            )
            batch[i] = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
            sizes[i] = (width, height)
            metas.append(ImageMeta(width=width, height=height))
        return {"images": batch, "orig_target_sizes": sizes}, metas

    def postprocess(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        labels = np.asarray(outputs["labels"])
        boxes = np.asarray(outputs["boxes"])
        scores = np.asarray(outputs["scores"])
        return [
            Detections(
                labels=labels[i].astype(np.int64),
                boxes=boxes[i].astype(np.float32),
                scores=scores[i].astype(np.float32),
            )
            for i in range(len(metas))
        ]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x.astype(np.float64))))


def decode_raw(
    logits: np.ndarray, boxes: np.ndarray, size_wh: np.ndarray | None, top_k: int = 300
) -> dict[str, np.ndarray]:
    """Deploy-style detections of one image from raw outputs: top-k (query, class), xyxy boxes."""
    num_classes = logits.shape[-1]
    probs = _sigmoid(logits).reshape(-1)
    order = np.argsort(-probs, kind="stable")[: min(top_k, probs.size)]
    query, labels = np.divmod(order, num_classes)
    cx, cy, w, h = (boxes[query, i].astype(np.float64) for i in range(4))
    xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
    if size_wh is not None:
        xyxy = xyxy * np.tile(np.asarray(size_wh, dtype=np.float64), 2)
    return {"labels": labels[None], "boxes": xyxy[None], "scores": probs[order][None]}
