"""Building RT-DETRv2 networks with their weights: the one place that joins variants and checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

from rtq.models.checkpoint import load_checkpoint
from rtq.models.checkpoint_sources import resolve_checkpoint
from rtq.models.fold import fold_batch_norms
from rtq.models.postprocess import RTDETRPostProcessor
from rtq.models.registry import VARIANTS, construct, get_variant
from rtq.models.rtdetr import RTDETR, RTDETRDeploy

log = logging.getLogger(__name__)


def build_model(name: str, checkpoint: str | Path | None = None) -> RTDETR:
    """RT-DETRv2 `name` in eval mode: `forward(images) -> {"pred_logits", "pred_boxes"}`.

    `checkpoint` is a path or a spec of `rtq.models.checkpoint_sources` (`official`, `hf:<repo id>`,
    a URL), fetched before the network is built. Without one the weights are the random
    initialisation (useful for graph work only).
    """
    variant = get_variant(name)  # an unknown name fails before any download
    resolved = resolve_checkpoint(checkpoint, name)
    model = construct(variant)
    if resolved is None:
        log.info("model %s: no checkpoint given, weights are the random initialisation", name)
    else:
        load_checkpoint(model, resolved.path, name)
    return model.eval()


def build_deploy_model(
    name: str, checkpoint: str | Path | None = None, fold_batch_norm: bool = True
) -> RTDETRDeploy:
    """Export form: RepVGG fused, `forward(images, orig_target_sizes) -> (labels, boxes, scores)`.

    `fold_batch_norm` also folds every Conv's BatchNorm into it, so quantization sees the weights
    that get deployed (the reference deploy form keeps them apart; outputs agree to float rounding).
    """
    model = build_model(name, checkpoint)
    num_classes = VARIANTS[name].num_classes
    deploy = RTDETRDeploy(model, RTDETRPostProcessor(num_classes=num_classes)).eval()
    if fold_batch_norm:
        fold_batch_norms(deploy)
    return deploy
