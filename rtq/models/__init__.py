"""RT-DETRv2 models: builders, variant names, and the detector IO used by every runner.

Names are resolved lazily so that importing `rtq.models.io` or the ONNX-only adapters does not
pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtq.models.build import build_deploy_model, build_model
    from rtq.models.registry import list_models
    from rtq.models.rtdetr import RTDETRIO

__all__ = ["RTDETRIO", "build_deploy_model", "build_model", "list_models"]

_HOMES = {
    "build_model": "rtq.models.build",
    "build_deploy_model": "rtq.models.build",
    "list_models": "rtq.models.registry",
    "RTDETRIO": "rtq.models.rtdetr",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'rtq.models' has no attribute {name!r}")
