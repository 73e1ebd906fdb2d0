"""The result row of a run: identity columns, what ran, and each stage's declared fields.

The labels describe what actually ran (a TensorRT experiment whose build was skipped is labelled
with the backend and precision that did run), never the config's wish.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rtq.models.family import Detector


def result_row(
    cfg: DictConfig, detector: Detector, run_dir: Path, fields: dict[str, Any], skipped: list[str]
) -> dict[str, Any]:
    """One row for `results.json` and the results store."""
    evaluation = dict(fields["evaluation"])
    ran = evaluation.pop("ran")
    row: dict[str, Any] = {
        "experiment": str(cfg.experiment_name),
        "model": detector.name,
        "weights": detector.weights,
        "backend": ran["backend"],
        "precision": ran["precision"],
        "recipe": str(cfg.quant.name) if ran["precision"].startswith("int8") else "-",
        "dataset": str(cfg.data.name),
        "data_root": str(cfg.data.root),
    }
    for key in ("compiler", "device", "build_flags"):
        if ran.get(key):
            row[key] = ran[key]
    if ran.get("settings"):
        row["backend_settings"] = ran["settings"]
    row.update(evaluation)
    row.update({key: value for key, value in fields.items() if key != "evaluation"})
    row["run_dir"] = str(run_dir)
    row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    multirun = multirun_membership()
    if multirun:
        row["multirun"] = multirun
    if skipped:
        row["skipped"] = skipped
    return row


def multirun_membership() -> dict[str, Any]:
    """Which Hydra multirun this run belongs to (its sweep folder, job number and overrides), or {}."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {}
    return {
        "dir": str(hydra_cfg.sweep.dir),
        "job": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
    }
