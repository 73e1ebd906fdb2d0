"""End-to-end runs of `python -m rtq.run` on the bundled data, and its one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from rtq.evaluate.coco_ap import STAT_KEYS
from rtq.paths import PROJECT_ROOT, SHARED_DIR

PARITY_CHECKPOINT = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"
ROW_KEYS = {
    *("experiment", "model", "backend", "precision", "dataset", "num_images"),
    *("fps_model", "fps_e2e", "batch_size"),
    *STAT_KEYS[:6],  # ap, ap50, ap75, ap_small, ap_medium, ap_large
}


def run_rtq(
    tmp_path: Path, *overrides: str, cache: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run one experiment into `tmp_path/run` with its own store and (unless given) its own cache."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "rtq.run",
        *overrides,
        f"hydra.run.dir={run_dir}",
        f"results.store={tmp_path / 'store.jsonl'}",
        f"cache_dir={cache or tmp_path / 'cache'}",
    ]
    proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    return proc, run_dir


def stage_status(run_dir: Path) -> dict[str, dict[str, object]]:
    return {record["stage"]: record for record in json.loads((run_dir / "stages.json").read_text())}


def test_fp32_torch_writes_a_result_row_and_appends_it_to_the_store(tmp_path: Path) -> None:
    proc, run_dir = run_rtq(
        tmp_path,
        "experiment=fp32_torch",
        "data.max_images=2",
        "evaluate.sweep_batches=[1]",
        "evaluate.iterations=1",
        "evaluate.warmup=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((run_dir / "results.json").read_text())
    assert ROW_KEYS <= row.keys()
    assert row["backend"] == "torch" and row["precision"] == "fp32" and row["num_images"] == 2
    assert row["weights"] == "random"
    stored = [json.loads(line) for line in (tmp_path / "store.jsonl").read_text().splitlines()]
    assert stored == [row]


@pytest.mark.skipif(
    not PARITY_CHECKPOINT.is_file(), reason=f"parity checkpoint not found at {PARITY_CHECKPOINT}"
)
def test_int8_extra_outputs_runs_every_stage_but_build_and_reuses_the_calibration(tmp_path: Path) -> None:
    common = [
        "experiment=int8_extra_outputs",
        f"model.checkpoint={PARITY_CHECKPOINT}",
        "data.max_images=2",
        "quant.calib.max_images=2",
        "quant.calib.batch_size=2",
        "export.fidelity_images=1",
        "evaluate.sweep_batches=[]",
    ]
    proc, run_dir = run_rtq(tmp_path, *common, "compare.num_images=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = stage_status(run_dir)
    assert [s for s in stages] == ["quantize", "export", "surgery", "build", "compare", "evaluate"]
    assert stages["build"]["status"] == "skipped"
    assert stages["build"]["reason"] == "TensorRT not installed"
    assert all(stages[s]["status"] == "ok" for s in ("quantize", "export", "surgery", "compare", "evaluate"))

    marked = onnx.load(str(run_dir / "model.mark_extra_outputs.onnx"), load_external_data=False)
    outputs = [o.name for o in marked.graph.output]
    assert outputs[:3] == ["labels", "boxes", "scores"]
    assert len(outputs) == 3 + 2 * 3  # two projections in each of r18vd's three decoder layers
    assert (run_dir / "compare" / "report.md").is_file()
    row = json.loads((run_dir / "results.json").read_text())
    assert row["precision"] == "int8" and row["recipe"] == "int8_default"
    assert row["quantizers"]["total"] > 0
    assert any("TensorRT not installed" in s for s in row["skipped"])
    fidelity = row["fidelity"]  # torch fake-quant vs the exported Q/DQ graph, recorded by the export stage
    assert fidelity["raw_float64_within_tolerance"] == 1.0
    assert fidelity["raw_float64_pred_logits_max_abs"] <= 1e-4
    assert fidelity["raw_float64_pred_boxes_max_abs"] <= 1e-4
    assert fidelity["raw_float64_queries_selected_differently"] == 0
    assert "fidelity, raw outputs in float64" in proc.stderr + proc.stdout

    # A changed comparison setting must not re-calibrate: the calibrated ONNX comes from the cache.
    again, run_dir2 = run_rtq(tmp_path / "second", *common, "compare.num_images=2", cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    stages2 = stage_status(run_dir2)
    assert stages2["quantize"]["status"] == "cached"
    assert json.loads((run_dir2 / "results.json").read_text())["cache"] == "exported ONNX reused"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=rtdetrv2_r19vd"], "unknown model 'rtdetrv2_r19vd'"),
        (["model.checkpoint=/nonexistent/rtdetrv2.pth"], "/nonexistent/rtdetrv2.pth"),
        (["data.root=/nonexistent/coco"], "/nonexistent/coco"),
        (["experiment=int8_default", "data.calib.source=/nonexistent/calib"], "/nonexistent/calib"),
        (["experiment=int8_default", "data.calib.source=/nonexistent/*.jpg"], "/nonexistent/*.jpg"),
        (["experiment=int8_default", "quant.calib.method=kmeans"], "kmeans"),
        (["experiment=int8_default", "quant.exclude=[nothing_like_this*]"], "nothing_like_this*"),
    ],
)
def test_bad_input_ends_in_one_line_and_exit_code_2(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    proc, run_dir = run_rtq(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "results.json").exists()


def test_empty_calibration_folder_is_a_user_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, run_dir = run_rtq(tmp_path, "experiment=int8_default", f"data.calib.source={empty}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(empty) in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "results.json").exists()
