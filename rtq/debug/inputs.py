"""What the debug command lines load by name: a detector from `conf/model/`, sample images.

The commands take `--model NAME` like the pipeline takes `model=NAME`, so a detector is whatever
its config and family say, with no model name tested in code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtq.errors import UserError
from rtq.models.family import Detector, DetectorFamily, get_family, load_detector
from rtq.paths import CONF_DIR, data_dir


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """`conf/model/<name>.yaml` resolved, with the overrides that are not None applied."""
    from omegaconf import OmegaConf

    from rtq.config import register_resolvers

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise UserError(f"--model {name!r} has no conf/model/{name}.yaml; use one of: {known}")
    register_resolvers()
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(config, dict)
    config.update({key: value for key, value in overrides.items() if value is not None})
    return {str(key): value for key, value in config.items()}


def model_family(name: str) -> DetectorFamily:
    """The family of a configured model, without loading the model."""
    return get_family(str(model_config(name).get("family", "rtdetr")))


def load_named_detector(name: str, **overrides: Any) -> Detector:
    """The detector of `conf/model/<name>.yaml` (random weights seeded, so repeated runs agree)."""
    import torch

    torch.manual_seed(0)
    return load_detector(model_config(name, **overrides))


def sample_images(source: str | None, count: int) -> list[np.ndarray]:
    """The first `count` images of `source`, or of the bundled calibration images."""
    from rtq.data.calib import CalibrationImages

    folder = source or data_dir("coco_calib")
    if folder is None:
        raise UserError("no images found (no data/coco_calib here or in ../shared): pass an image folder")
    return list(CalibrationImages(folder, max_images=count))
