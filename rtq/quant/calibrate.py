"""Calibration data for a recipe, and the pipeline's in-place form of `rtq.quant.quantize.quantize`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.nn as nn

from rtq.errors import UserError
from rtq.models.io import DetectorIO
from rtq.quant.quantize import Feed, quantize
from rtq.quant.recipes import Recipe


def quantize_model(
    model: nn.Module,
    recipe: Recipe,
    calib_batches: Iterable[Feed],
    progress: bool = True,
) -> nn.Module:
    """`quantize(..., in_place=True)`: quantizes `model` itself, as the pipeline's quantize stage expects."""
    return quantize(model, recipe, calib_batches, progress, in_place=True)


def calibration_feeds(
    recipe: Recipe, io: DetectorIO, source: str | Path | None = None
) -> list[dict[str, Any]]:
    """The recipe's calibration batches: its `max_images` from `source` (or `calib.source`), batched."""
    from rtq.data.calib import CalibrationImages, calibration_batches

    folder = source if source is not None else recipe.calib.source
    if folder is None:
        raise UserError(
            f"recipe {recipe.name!r} has no calibration images; set data.calib.source=PATH to a folder of "
            "images"
        )
    images = CalibrationImages(folder, max_images=recipe.calib.max_images)
    return list(calibration_batches(images, io, recipe.calib.batch_size))
