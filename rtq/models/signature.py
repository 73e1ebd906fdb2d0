"""Key/shape signatures of rtq's variants, so checkpoints are matched to variants without building them.

Both checkpoint readers (official `.pth` and Hugging Face folders) need them, so they live apart from
either reader.
"""

from __future__ import annotations

import functools
import re

import torch

from rtq.errors import UserError
from rtq.models.registry import VARIANTS, construct

Signature = dict[str, tuple[int, ...]]
# Buffers that follow from the config (anchors, masks, scales, BatchNorm counters), not from training.
_SHOWN_KEYS = 3
_DERIVED = re.compile(r"(^decoder\.anchors|^decoder\.valid_mask|\.num_points_scale|\.num_batches_tracked)$")


@functools.cache
def variant_signature(name: str) -> Signature:
    """Key -> shape of variant `name`, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = construct(VARIANTS[name])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def first_keys(keys: list[str]) -> str:
    """The first few of `keys` and how many more, for one-line errors about a checkpoint's keys."""
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _normalise(signature: Signature) -> Signature:
    """Drop `num_batches_tracked` keys, which frozen-norm backbones ignore when loading."""
    return {k: v for k, v in signature.items() if not k.endswith("num_batches_tracked")}


def closest_variants(signature: Signature) -> list[str]:
    """Known variants whose key/shape signature is closest to `signature` (ties all returned)."""
    target = set(_normalise(signature).items())
    scores: dict[str, float] = {}
    for name in VARIANTS:
        known = set(_normalise(variant_signature(name)).items())
        scores[name] = len(target & known) / max(len(target | known), 1)
    best = max(scores.values())
    return sorted(n for n, s in scores.items() if s == best)


def _learned(signature: Signature) -> Signature:
    return {k: v for k, v in signature.items() if not _DERIVED.search(k)}


def matching_variant(signature: Signature) -> str | None:
    """The variant whose learned tensors `signature` matches exactly (derived buffers may be absent).

    A `_dsp` variant has the same keys and shapes as its twin, so the weights alone cannot tell them
    apart: the default-sampling twin is returned; callers that know better pass the name themselves.
    """
    target = _learned(signature)
    exact = [name for name in VARIANTS if _learned(variant_signature(name)) == target]
    plain = [name for name in exact if VARIANTS[name].cross_attn_method == "default"]
    found = plain or exact
    return found[0] if found else None


def variant_of_weights(state: dict[str, torch.Tensor], source: str, advice: str) -> str:
    """`matching_variant` of `state`'s shapes, or a one-line `UserError` naming the closest variants."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    name = matching_variant(shapes)
    if name is None:
        closest = " or ".join(closest_variants(shapes))
        raise UserError(f"{source} matches no rtq variant (closest: {closest}); {advice}")
    return name
