"""Top-level RT-DETRv2 module, its deploy wrapper, and the `DetectorIO` that feeds it.

`RTDETR` registers its children in the official order (backbone, decoder, encoder) so that
`state_dict()` lists keys exactly like the released checkpoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from rtq.models.decoder import RTDETRTransformerv2
from rtq.models.io import Detections, ImageMeta
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


class RTDETRIO:
    """Official RT-DETR preprocessing: PIL bilinear resize to 640x640 (no aspect keep), RGB, /255."""

    input_size: int = 640
    input_names: tuple[str, ...] = ("images", "orig_target_sizes")
    output_names: tuple[str, ...] = ("labels", "boxes", "scores")

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


def list_models() -> list[str]:
    """Names accepted by `build_model` (the variant table lives in `rtq.models.registry`)."""
    from rtq.models.registry import VARIANTS

    return sorted(VARIANTS)
