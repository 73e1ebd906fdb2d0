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
    assert list(stages) == ["quantize", "export", "fidelity", "surgery", "build", "compare", "evaluate"]
    assert stages["build"]["status"] == "skipped"
    assert stages["build"]["reason"] == "TensorRT not installed"
    ran = ("quantize", "export", "fidelity", "surgery", "compare", "evaluate")
    assert all(stages[s]["status"] == "ok" for s in ran)

    marked = onnx.load(str(run_dir / "model.mark_extra_outputs.onnx"), load_external_data=False)
    outputs = [o.name for o in marked.graph.output]
    assert outputs[:3] == ["labels", "boxes", "scores"]
    assert len(outputs) == 3 + 2 * 3  # two projections in each of r18vd's three decoder layers
    assert (run_dir / "compare" / "report.md").is_file()
    row = json.loads((run_dir / "results.json").read_text())
    assert row["precision"] == "int8" and row["recipe"] == "int8_default"
    assert row["quantizers"]["total"] > 0
    assert any("TensorRT not installed" in s for s in row["skipped"])
    assert row["backend"] == "onnxruntime"  # what ran: the build was skipped, so not "tensorrt"
    fidelity = row["fidelity"]  # torch fake-quant vs the exported Q/DQ graph, recorded by the fidelity stage
    assert fidelity["raw_float64_within_tolerance"] == 1.0
    assert fidelity["raw_float64_pred_logits_max_abs"] <= 1e-4
    assert fidelity["raw_float64_pred_boxes_max_abs"] <= 1e-4
    assert fidelity["raw_float64_queries_selected_differently"] == 0
    assert "fidelity, raw outputs in float64" in proc.stderr + proc.stdout

    # A changed comparison setting must not re-calibrate: the calibrated ONNX comes from the cache.
    again, run_dir2 = run_rtq(tmp_path / "second", *common, "compare.num_images=2", cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    stages2 = stage_status(run_dir2)
    assert stages2["quantize"]["status"] == "cached" and stages2["export"]["status"] == "cached"
    row2 = json.loads((run_dir2 / "results.json").read_text())
    assert row2["quantizers"] == row["quantizers"]  # the restored model is the calibrated one
    assert row2["fidelity"]["raw_float64_within_tolerance"] == 1.0


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


def assert_one_line_user_error(proc: subprocess.CompletedProcess[str], run_dir: Path, *expected: str) -> str:
    """Exit code 2, stderr exactly one `error:` line naming `expected`, no result file; the line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    assert all(text in lines[0] for text in expected), lines[0]
    assert not (run_dir / "results.json").exists()
    return lines[0]


def conf_choices(group: str) -> set[str]:
    return {p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml")}


GROUP_ERRORS = [
    (["experiment=nope"], "experiment", "nope"),
    (["+experiment=nope"], "experiment", "nope"),
    (["data.max_images=1", "experiment=nope"], "experiment", "nope"),
    (["--cfg", "job", "experiment=nope"], "experiment", "nope"),
    (["experiment=null"], "experiment", "null"),
    (["experiment="], "experiment", "experiment="),
    (["-m", "experiment=fp32,nope"], "experiment", "'nope'"),
    (["model=nope"], "model", "nope"),
    (["model=null"], "model", "null"),
    (["data=nope"], "data", "nope"),
    (["quant=nope"], "quant", "nope"),
    (["surgery=nope"], "surgery", "nope"),
    (["backend=nope"], "backend", "nope"),
]


def assert_lists_the_group(line: str, group: str) -> None:
    listed = line.split("choose one of ", 1)[1].rsplit(" (", 1)[0].split(", ")
    assert set(listed) == conf_choices(group), line


@pytest.mark.parametrize(("overrides", "group", "value"), GROUP_ERRORS)
def test_unknown_config_choice_lists_every_yaml_of_its_group(
    overrides: list[str], group: str, value: str
) -> None:
    from rtq.errors import UserError
    from rtq.run import check_group_overrides

    with pytest.raises(UserError) as info:
        check_group_overrides(overrides)
    line = str(info.value)
    assert "\n" not in line and value in line and f"{group}=NAME" in line
    assert_lists_the_group(line, group)


@pytest.mark.parametrize(("overrides", "group", "value"), [GROUP_ERRORS[i] for i in (0, 4, 6)])
def test_unknown_config_choice_ends_the_command_in_one_line(
    tmp_path: Path, overrides: list[str], group: str, value: str
) -> None:
    proc, run_dir = run_rtq(tmp_path, *overrides)
    assert_lists_the_group(assert_one_line_user_error(proc, run_dir, value, f"{group}=NAME"), group)


def test_group_sweeps_and_extra_config_dirs_are_checked_choice_by_choice(tmp_path: Path) -> None:
    from rtq.errors import UserError
    from rtq.run import check_group_overrides

    check_group_overrides(["-m", "experiment=fp32,int8_default"])
    check_group_overrides(["experiment=glob(yolox_*)", "~surgery"])
    extra = tmp_path / "conf"
    (extra / "experiment").mkdir(parents=True)
    (extra / "experiment" / "mine.yaml").write_text("stages: [evaluate]\n")
    check_group_overrides(["--config-dir", str(extra), "experiment=mine"])
    check_group_overrides([f"-cd={extra}", "experiment=mine"])
    with pytest.raises(UserError, match=r"unknown experiment 'mine'.*fp32"):
        check_group_overrides(["experiment=mine"])
    with pytest.raises(UserError, match=r"unknown experiment 'nope'.*mine"):
        check_group_overrides(["--config-dir", str(extra), "experiment=nope"])


def write_junk(path: Path, kind: str) -> Path:
    """Random bytes, a text file or an empty file: what a wrong path or a failed download leaves."""
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 16)
    elif kind == "text":
        path.write_text("<html>404 Not Found</html>\n")
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["random"])  # text and empty: tests/models/test_checkpoint.py, in process
def test_a_checkpoint_that_is_no_checkpoint_is_one_line(tmp_path: Path, kind: str) -> None:
    path = write_junk(tmp_path / "weights.pth", kind)
    proc, run_dir = run_rtq(tmp_path, "experiment=fp32_torch", f"model.checkpoint={path}")
    assert_one_line_user_error(proc, run_dir, f"{path} is not a PyTorch checkpoint", "model.checkpoint=PATH")


@pytest.mark.parametrize("kind", ["random", "add"])  # text: tests/models/test_onnx_source.py, in process
def test_an_onnx_path_that_is_no_detector_is_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "detector.onnx"
    if kind == "add":
        tensors = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3]) for n in "abc"]
        node = onnx.helper.make_node("Add", ["a", "b"], ["c"])
        graph = onnx.helper.make_graph([node], "add", tensors[:2], tensors[2:])
        onnx.save(onnx.helper.make_model(graph), path)
    else:
        write_junk(path, kind)
    proc, run_dir = run_rtq(tmp_path, "experiment=yolox_fp32", f"model.onnx_path={path}", "data.max_images=1")
    assert_one_line_user_error(proc, run_dir, str(path), "model.onnx_path=")


def test_rows_say_what_ran_and_with_which_onnxruntime_settings(tmp_path: Path) -> None:
    from rtq.backends.tensorrt.compat import tensorrt_available

    quick = ["data.max_images=1", "evaluate.sweep_batches=[]", "evaluate.warmup=0", "evaluate.iterations=1"]
    proc, run_dir = run_rtq(tmp_path / "fp16", "experiment=fp16", *quick, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((run_dir / "results.json").read_text())
    if tensorrt_available():
        assert (row["backend"], row["precision"]) == ("tensorrt", "fp16")
    else:  # the build was skipped: the FP32 ONNX ran in ONNX Runtime, and the row says so
        assert (row["backend"], row["precision"]) == ("onnxruntime", "fp32")
    ort = ["experiment=fp32_onnx", "backend.intra_op_threads=1", *quick]
    proc, run_dir = run_rtq(tmp_path / "ort", *ort, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((run_dir / "results.json").read_text())
    assert row["backend_settings"] == {"intra_op_threads": 1}


def test_yolox_int8_on_openvino_end_to_end_with_the_unsigned_fix(tmp_path: Path) -> None:
    """The whole chain on a real INT8 compiler: quantize, the graph pass, OpenVINO build with its
    layer report, compare against ONNX Runtime with the detection match, and AP."""
    proc, run_dir = run_rtq(
        tmp_path,
        "experiment=yolox_openvino_int8_max_unsigned",
        "data.max_images=8",
        "quant.calib.max_images=8",
        "compare.num_images=2",
        "evaluate.sweep_batches=[]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((run_dir / "results.json").read_text())
    assert (row["backend"], row["precision"]) == ("openvino", "int8")
    assert row["compiler"].startswith("openvino ") and row["backend_settings"]["inference_precision"] == "f32"
    assert row["ap"] > 15.0  # the unfixed graph scores ~0 on OpenVINO (see the QDQ regression test)
    assert row["compare"]["target_backend"] == "openvino"
    assert row["compare"]["summary"]["detections_matched_fraction"] > 0.5
    layers = (run_dir / "layers.md").read_text()
    assert "| Convolution | u8 |" in layers and "## Fusions" in layers
    assert {"surgery", "build", "compare"} <= {
        s for s, r in stage_status(run_dir).items() if r["status"] == "ok"
    }
