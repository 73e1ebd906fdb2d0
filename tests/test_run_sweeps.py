"""Sweeps on Hydra's launcher plugins: one `python -m rtq.run -m` over three recipes, run by the joblib
launcher (local processes) and by submitit_local (the Slurm launcher's local twin), each job appending
its row to one results store, and the table marking which rows belong to which sweep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rtq.paths import PROJECT_ROOT
from rtq.results.store import load_store
from rtq.results.table import markdown_table

RECIPES = ("onnx_int8_max", "onnx_int8_entropy", "onnx_int8_all_max")
pytestmark = pytest.mark.skipif(
    not (PROJECT_ROOT / "models" / "yolox_nano.onnx").is_file(), reason="models/yolox_nano.onnx is missing"
)


@pytest.mark.parametrize(
    "launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]]
)
def test_three_recipe_sweep_on_a_launcher(tmp_path: Path, launcher: list[str]) -> None:
    store = tmp_path / "results.jsonl"
    command = [
        sys.executable, "-m", "rtq.run", "-m", *launcher,
        "experiment=yolox_int8_max", f"quant={','.join(RECIPES)}",
        "stages=[export,quantize_onnx,evaluate]", "quant.calib.max_images=2", "quant.calib.batch_size=2",
        "data.max_images=2", "evaluate.sweep_batches=[1]", "evaluate.iterations=1",
        f"results.store={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_store(store)
    assert sorted(r["recipe"] for r in rows) == sorted(RECIPES)
    assert sorted(r["multirun"]["job"] for r in rows) == [0, 1, 2]
    assert {r["multirun"]["dir"] for r in rows} == {str(tmp_path / "sweep")}
    table = markdown_table(rows)
    assert all(f"sweep #{job} |" in table for job in range(3))
