"""RT-DETRv2 models: builders, variant names, and the detector IO used by every runner."""

from rtq.models.registry import build_deploy_model, build_model, list_models
from rtq.models.rtdetr import RTDETRIO

__all__ = ["RTDETRIO", "build_deploy_model", "build_model", "list_models"]
