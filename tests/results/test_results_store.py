"""results.json writing, the JSON-lines store, table rendering and `python -m rtq.table`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from rtq.errors import UserError
from rtq.results.store import append_to_store, load_store, write_results
from rtq.results.table import latest_rows, markdown_table, render_csv, render_markdown
from rtq.table import main as table_main


def row(**overrides: Any) -> dict[str, Any]:
    base = {
        "experiment": "baseline",
        "model": "rtdetrv2_r18vd",
        "weights": "random",
        "backend": "onnxruntime",
        "precision": "fp32",
        "recipe": "none",
        "ap": 48.123,
        "ap50": 65.0,
        "fps_e2e": 12.34,
        "fps_model": 20.0,
        "batch_size": 4,
        "num_images": 80,
    }
    return {**base, **overrides}


def test_write_results_is_complete_json_and_leaves_no_temp_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    path = write_results(run_dir, row())
    assert path == run_dir / "results.json"
    assert json.loads(path.read_text()) == row()
    write_results(run_dir, row(ap=1.0))
    assert json.loads(path.read_text())["ap"] == 1.0
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json"]
    with pytest.raises(ValueError):
        write_results(run_dir, row(ap=float("nan")))
    assert json.loads(path.read_text())["ap"] == 1.0
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json"]


def test_store_round_trip_and_errors(tmp_path: Path) -> None:
    store = tmp_path / "deep" / "results.jsonl"
    append_to_store(store, row())
    append_to_store(store, row(backend="tensorrt", precision="int8"))
    assert load_store(store) == [row(), row(backend="tensorrt", precision="int8")]
    with pytest.raises(UserError, match="does not exist"):
        load_store(tmp_path / "none.jsonl")
    store.write_text(store.read_text() + "\n{broken\n")
    with pytest.raises(UserError, match="line 4"):
        load_store(store)


def test_latest_row_per_configuration_keeps_first_order() -> None:
    rows = [row(ap=1.0), row(backend="tensorrt", ap=2.0), row(ap=3.0), row(experiment="other", ap=4.0)]
    latest = latest_rows(rows)
    assert [(r["backend"], r["experiment"], r["ap"]) for r in latest] == [
        ("onnxruntime", "baseline", 3.0),
        ("tensorrt", "baseline", 2.0),
        ("onnxruntime", "other", 4.0),
    ]


def test_markdown_and_csv() -> None:
    table = markdown_table([row(), row(fps_model=None, recipe="a|b")])
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| Experiment | Model | Weights | Backend | Compiler | Precision | Recipe | AP | AP50 | FPS e2e "
        "| FPS model | Batch | Images |"
    )
    assert lines[2] == (
        "| baseline | rtdetrv2_r18vd | random | onnxruntime | — | fp32 | none "
        "| 48.12 | 65.00 | 12.3 | 20.0 | 4 | 80 |"
    )
    assert "| — |" in lines[3] and "a\\|b" in lines[3]

    engine = row(backend="tensorrt", compiler="tensorrt 10.13.0", device="NVIDIA L4",
                 build_flags="int8_qdq strongly-typed tf32=off")
    header = markdown_table([row(), engine]).splitlines()[0]
    assert "| Compiler | Device | Build flags | Precision |" in header  # a TensorRT row adds them
    assert "| NVIDIA L4 | int8_qdq strongly-typed tf32=off |" in markdown_table([engine])
    assert render_csv([engine]).splitlines()[0].split(",")[4:7] == ["compiler", "device", "build_flags"]

    doc = render_markdown([row(ap=1.0), row(ap=2.0), row(experiment="int8")])
    assert "| baseline |" in doc and "| int8 |" in doc
    assert "| 2.00 |" in doc and "| 1.00 |" not in doc
    assert "| 1.00 |" in render_markdown([row(ap=1.0), row(ap=2.0)], latest=False)

    parsed = list(csv.DictReader(io.StringIO(render_csv([row(), row(ap=5.5)]))))
    assert len(parsed) == 1 and parsed[0]["ap"] == "5.5" and parsed[0]["experiment"] == "baseline"


def test_fidelity_table_lists_rows_whose_export_measured_it() -> None:
    fidelity = {"images": 2.0, "raw_float64_pred_logits_max_abs": 2.7e-15, "raw_queries": 600.0,
                "raw_float64_pred_boxes_max_abs": 4.4e-16, "raw_float64_within_tolerance": 1.0,
                "raw_pred_logits_max_abs": 1.33, "raw_queries_selected_differently": 453.0}
    doc = render_markdown([row(), row(experiment="int8", fidelity=fidelity)])
    assert "Export fidelity" in doc
    assert "| int8 | rtdetrv2_r18vd | none | 2 | 2.7e-15 | 4.4e-16 | yes | 1.3 | 453/600 |" in doc
    assert "| baseline | rtdetrv2_r18vd | none | 2" not in doc  # FP32 rows were not measured
    assert "Export fidelity" not in render_markdown([row()])
    failed = render_markdown([row(fidelity={**fidelity, "raw_float64_within_tolerance": 0.0})])
    assert "| **no** |" in failed


def test_table_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "results.jsonl"
    append_to_store(store, row())
    out, out_csv = tmp_path / "md" / "results.md", tmp_path / "results.csv"
    assert table_main(["--store", str(store), "--out", str(out), "--csv", str(out_csv)]) == 0
    text = out.read_text()
    assert "rtdetrv2_r18vd" in text and f"--store {store}" in text
    assert out_csv.read_text().startswith("experiment,model,")

    with pytest.raises(SystemExit) as exit_info:
        table_main(["--store", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.jsonl" in err


def _append_many(store: str, writer: int, rows: int) -> None:
    for index in range(rows):
        # Rows far larger than PIPE_BUF (4 KiB): one unlocked write could interleave with another's.
        append_to_store(store, row(experiment=f"w{writer}", num_images=index, padding="x" * 20_000))


def test_concurrent_writers_lose_no_row_and_leave_no_partial_line(tmp_path: Path) -> None:
    import multiprocessing

    store = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(store), w, 25)) for w in range(8)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    rows = load_store(store)  # every line parses
    assert len(rows) == 8 * 25
    assert sorted((r["experiment"], r["num_images"]) for r in rows) == sorted(
        (f"w{w}", i) for w in range(8) for i in range(25)
    )


def test_sweep_rows_are_marked_and_kept_apart() -> None:
    sweep = {"dir": "/runs/sweeps/yolox_int8_max_2026-12-01_20-00-00", "job": 1, "overrides": ["quant=a"]}
    other_job = {**sweep, "job": 2, "overrides": ["x=1"]}
    rows = [row(), row(recipe="a", multirun=sweep), row(recipe="a", multirun=other_job)]
    table = markdown_table(latest_rows(rows))
    assert "| Experiment | Sweep | Model |" in table
    assert "| yolox_int8_max_2026-12-01_20-00-00 #1 |" in table and "#2 |" in table
    assert len(latest_rows(rows)) == 3  # same identity columns, different sweep jobs
    assert "Sweep" not in markdown_table([row()])  # no sweep, no column
