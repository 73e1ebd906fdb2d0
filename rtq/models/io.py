"""How a detector talks to the evaluation loop, whatever backend runs it.

Every backend runner sees the same feed dict and returns the same output names, so evaluation,
FPS timing and comparison treat PyTorch, ONNX Runtime and TensorRT alike. A `DetectorIO` turns
decoded images into that feed and the runner's outputs back into detections in original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# The feed and output names every runner uses (see docs/DESIGN.md, "Feeds").
DETECTION_INPUTS = ("images", "orig_target_sizes")
DETECTION_OUTPUTS = ("labels", "boxes", "scores")


@dataclass
class ImageMeta:
    """What postprocessing needs to map boxes back to the original image."""

    width: int
    height: int
    scale: float = 1.0  # letterbox ratio (network pixels per original pixel); 1.0 when unused


@dataclass
class Detections:
    """Detections of one image: contiguous class labels (0..C-1), xyxy boxes in original pixels."""

    labels: np.ndarray  # int64 [K]
    boxes: np.ndarray  # float32 [K, 4]
    scores: np.ndarray  # float32 [K]


class DetectorIO(Protocol):
    """Pre- and post-processing of one detector family around its network."""

    input_size: int  # square network input side (640 for RT-DETR, 416 for YOLOX-Nano)
    input_names: tuple[str, ...]

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        """RGB uint8 HWC images -> runner feed dict (batched) and per-image metadata."""
        ...

    def postprocess(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        """Runner outputs for a batch -> per-image detections in original pixels."""
        ...
