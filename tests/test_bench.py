"""The benchmark's command line: flags override `conf/bench.yaml`, bad values are user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.bench import parse_args
from rtq.errors import UserError
from rtq.paths import CONF_DIR


def test_parse_args_defaults_and_user_errors() -> None:
    settings = parse_args([])
    assert settings.model == "rtdetrv2_r18vd" and settings.batches == (1, 4)
    assert parse_args(["--checkpoint", "none", "--batches", "2"]).checkpoint is None
    with pytest.raises(UserError, match="--calib-images 0"):
        parse_args(["--calib-images", "0"])
    with pytest.raises(UserError, match="--iterations 0"):
        parse_args(["--iterations", "0"])
    with pytest.raises(UserError, match="unknown model name"):
        parse_args(["--model", "resnet"])


def test_flags_override_the_yaml_and_no_ort_variant_drops_the_variants() -> None:
    defaults = parse_args([])
    assert defaults.ort_variants and defaults.iterations > 0
    settings = parse_args(["--iterations", "3", "--warmup", "0", "--threads", "1", "--no-ort-variant"])
    assert (settings.iterations, settings.warmup, settings.threads) == (3, 0, 1)
    assert settings.ort_variants == {} and settings.recipe == defaults.recipe
    with pytest.raises(UserError, match="--batches"):
        parse_args(["--batches", "0"])


def test_a_model_with_its_own_bench_config_gets_it_and_config_picks_a_file(tmp_path: Path) -> None:
    yolox = parse_args(["--model", "yolox_nano", "--iterations", "3"])
    assert yolox.model == "yolox_nano" and yolox.torch_row is False and yolox.iterations == 3
    assert yolox.out.name == "bench_yolox_nano.md"
    config = tmp_path / "bench.yaml"
    text = (CONF_DIR / "bench_yolox_nano.yaml").read_text()
    config.write_text(text.replace("iterations: 50", "iterations: 7"))
    assert parse_args(["--config", str(config)]).iterations == 7
