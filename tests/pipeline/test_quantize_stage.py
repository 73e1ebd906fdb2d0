"""Stage `quantize` on a cache hit: the calibrated model itself comes back, so every later stage
(a torch evaluation included) measures the quantized model and never the FP32 one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtq.cache import ArtifactCache
from rtq.config import compose_config
from rtq.models.family import load_detector
from rtq.paths import SHARED_DIR
from rtq.pipeline.artifacts import Artifacts
from rtq.pipeline.stage import StageContext
from rtq.pipeline.stages.quantize import stage_quantize

PARITY_CHECKPOINT = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"


@pytest.mark.skipif(
    not PARITY_CHECKPOINT.is_file(), reason=f"parity checkpoint not found at {PARITY_CHECKPOINT}"
)
def test_cache_hit_restores_the_calibrated_model(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "experiment=int8_default",
            f"model.checkpoint={PARITY_CHECKPOINT}",
            "backend=torch",
            "quant.calib.max_images=2",
            "quant.calib.batch_size=2",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    detector = load_detector(cfg.model)
    cache = ArtifactCache(tmp_path / "cache")

    def run(folder: str) -> tuple[StageContext, object]:
        ctx = StageContext(
            cfg, tmp_path / folder, detector, cache, Artifacts(torch_model=detector.torch_model)
        )
        (tmp_path / folder).mkdir()
        return ctx, stage_quantize(ctx)

    first_ctx, first = run("first")
    second_ctx, second = run("second")
    assert not first.cached and second.cached  # type: ignore[attr-defined]
    assert first.record == second.record  # type: ignore[attr-defined]
    fresh, restored = first_ctx.artifacts.quantized_model, second_ctx.artifacts.quantized_model
    assert restored is not None and restored is not detector.torch_model
    feed, _ = detector.io.preprocess([np.full((48, 64, 3), 120, np.uint8)])
    inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.no_grad():
        expected, got, fp32 = fresh(**inputs), restored(**inputs), detector.torch_model(**inputs)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(expected, fp32, strict=True))  # not the FP32 model
