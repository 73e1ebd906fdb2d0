"""What several stages read from the config besides artifacts: calibration and evaluation images."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from rtq.pipeline.stage import StageContext


def calibration_source(cfg: DictConfig) -> str:
    """Calibration images: the recipe's own `quant.calib.source` if set, else the dataset's default."""
    own = (cfg.quant.get("calib") or {}).get("source")
    return str(own or cfg.data.calib.source)


def eval_images(ctx: StageContext, count: int) -> list[np.ndarray]:
    """The first `count` images of the evaluation set (decoded RGB)."""
    from rtq.data.coco import CocoDataset

    dataset = CocoDataset(str(ctx.cfg.data.root), max_images=ctx.cfg.data.get("max_images"))
    return [dataset.load_image(image) for image in dataset.images[:count]]
