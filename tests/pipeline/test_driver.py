"""The driver's chain check: every shipped experiment composes and passes it; broken chains fail in
one line naming the stage and the missing artifact, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from rtq.config import compose_config
from rtq.errors import UserError
from rtq.paths import CONF_DIR
from rtq.pipeline.artifacts import ARTIFACT_DOCS, Artifacts
from rtq.pipeline.driver import check_chain
from rtq.pipeline.stage import STAGES

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose_experiment(name: str, *overrides: str) -> DictConfig:
    return compose_config([f"experiment={name}", *overrides])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_its_chain_checks(experiment: str) -> None:
    cfg = compose_experiment(experiment)
    chain = check_chain(cfg)
    assert [spec.name for spec in chain] == list(cfg.stages)
    assert [spec.order for spec in chain] == sorted(spec.order for spec in chain)
    for spec in chain:
        if spec.section is not None:
            assert spec.section in cfg, f"{experiment}: stage {spec.name} reads a missing section"


def test_descriptors_name_only_known_artifacts() -> None:
    known = set(ARTIFACT_DOCS)
    for spec in STAGES.values():
        cfg = compose_experiment("int8_default")
        for need in spec.needs_for(cfg):
            assert set(need.split("|")) <= known, spec.name
        assert spec.makes_for(cfg, frozenset(known)) <= known, spec.name
    assert set(Artifacts().available()) == set()


@pytest.mark.parametrize(
    ("experiment", "overrides", "message"),
    [
        ("fp32_onnx", ["stages=[evaluate,export]"], "stage 'export' cannot come after 'evaluate'"),
        ("int8_default", ["stages=[export,quantize]"], "stage 'quantize' cannot come after 'export'"),
        ("fp32_onnx", ["stages=[compare,evaluate]"], "stage 'compare' needs qdq_onnx"),
        ("int8_default", ["stages=[quantize,fidelity]"], "put export or quantize_onnx before it"),
        ("fp32_onnx", ["stages=[export,fidelity]"], "stage 'fidelity' needs quantized_model"),
        ("yolox_int8_max", ["stages=[quantize,export]"], "stage 'quantize' needs torch_model"),
        ("yolox_fp32", ["stages=[quantize_onnx,evaluate]"], "put export before it"),
        ("yolox_fp32", ["backend=torch"], "stage 'evaluate' needs quantized_model"),
        ("fp32_onnx", ["stages=[export,nope]"], "unknown stage 'nope'"),
        ("fp32_onnx", ["stages=[export,export]"], "lists a stage twice"),
    ],
)
def test_broken_chains_fail_before_anything_runs(experiment: str, overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[")) as info:
        check_chain(compose_experiment(experiment, *overrides))
    assert "\n" not in str(info.value)


def test_export_makes_qdq_only_after_quantize() -> None:
    spec = STAGES["export"]
    cfg = compose_experiment("int8_default")
    assert spec.makes_for(cfg, frozenset({"torch_model"})) == {"onnx"}
    assert spec.makes_for(cfg, frozenset({"torch_model", "quantized_model"})) == {"qdq_onnx"}


def test_conf_has_no_unused_calibration_settings() -> None:
    # calibration size and batch belong to the recipe (`quant.calib`); `data` supplies only the source
    calib = compose_experiment("int8_default").data.calib
    assert set(calib) == {"source"}
    assert Path(str(calib.source)).name == "coco_calib"


@pytest.mark.slow
def test_sensitivity_stage_ranks_yolox_groups(tmp_path: Path) -> None:
    from rtq.paths import SHARED_DIR
    from rtq.pipeline.driver import run_pipeline

    if (
        not (SHARED_DIR / "models" / "yolox_nano.onnx").is_file()
        and not (CONF_DIR.parent / "models").is_dir()
    ):
        pytest.skip("yolox_nano.onnx not found")
    cfg = compose_experiment(
        "sensitivity_yolox",
        "sensitivity.calib_images=2",
        "sensitivity.coco_root=null",
        "sensitivity.auto_recipe=null",
        f"cache_dir={tmp_path / 'cache'}",
    )
    fields = run_pipeline(cfg, tmp_path / "run")
    record = fields["sensitivity"]
    assert record["int8_fidelity"] > 0 and len(record["most_sensitive"]) == 5
    assert (tmp_path / "run" / "sensitivity" / "sensitivity_yolox_nano.md").is_file()
