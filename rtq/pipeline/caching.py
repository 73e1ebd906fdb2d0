"""The pipeline's cache policy: what goes into a key, and reuse-or-make of one cached file.

Keys hash the settings and input file bytes that determine an artifact, plus the digest of the
rtq code that shapes it, so edited code or a changed input misses the cache while a changed
`compare` or `evaluate` setting does not re-calibrate.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtq.cache import cache_key, code_digest, file_digest
from rtq.pipeline.stage import StageContext


def model_key(ctx: StageContext) -> dict[str, Any]:
    """What determines the detector's weights: its config and the checkpoint or source file bytes."""
    model = ctx.section("model")
    # The family resolves `official`, `hf:...` or a URL to the local file or folder it loaded.
    checkpoint = ctx.detector.settings.get("checkpoint", model.get("checkpoint"))
    source = ctx.detector.source_onnx
    return {
        "model": model,
        "checkpoint": file_digest(checkpoint) if checkpoint else None,
        "source": file_digest(source) if source else None,
    }


def stage_key(ctx: StageContext, **parts: Any) -> str:
    """Key of an artifact made from the detector, `parts` (settings, input digests) and rtq's code."""
    return cache_key(**model_key(ctx), **parts, code=code_digest())


def reuse_or_make(ctx: StageContext, kind: str, key: str, out: Path, make: Callable[[Path], object]) -> bool:
    """The cached `kind/key` file (made first when missing) copied to `out`; True on a cache hit."""
    cached, hit = ctx.cache.fetch_or_make(kind, key, out.name, make)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    return hit
