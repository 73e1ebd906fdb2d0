"""Writing a comparison: ``report.json`` for programs, ``report.md`` for people (tables)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rtq.files import write_atomic

STAT_COLUMNS = (
    "max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel", "mean_rel", "median_rel", "p99_rel",
)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.3g}")
    return str(value)


def _stats_row(name: str, stats: dict[str, Any], extra: list[Any]) -> str:
    if stats.get("shape_mismatch"):
        cells = ["shape mismatch"] + [""] * (len(STAT_COLUMNS) - 1)
    else:
        cells = [_fmt(stats.get(c, "")) for c in STAT_COLUMNS]
    return "| " + " | ".join([f"`{name}`", *cells, *(_fmt(e) for e in extra)]) + " |"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Comparison: `{report['target']}` vs `{report['reference']}`", "",
             f"{report['iterations']} feeds; Polygraphy results: `{report['results_json']}`; "
             f"atol {report['settings']['atol']}, rtol {report['settings']['rtol']}.", "",
             *[f"Note: {note}" for note in report.get("notes", [])], *([""] if report.get("notes") else []),
             "## Outputs", "",
             "| output | " + " | ".join(STAT_COLUMNS) + " | Polygraphy passed |",
             "|" + " --- |" * (len(STAT_COLUMNS) + 2)]
    for name, stats in report["outputs"].items():
        lines.append(_stats_row(name, stats, [stats.get("polygraphy_passed", False)]))
    det = report.get("detections")
    if det:
        lines += ["", "## Detections (order-independent)", "",
                  f"Selection: {det['selection']}; match: same label and IoU >= {det['iou_threshold']}.", "",
                  "| reference dets | target dets | matched | matched fraction | target matched fraction "
                  "| score err max | score err mean |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| {det['reference_detections']} | {det['target_detections']} | {det['matched']} | "
                  f"{_fmt(det['matched_fraction'])} | {_fmt(det['target_matched_fraction'])} | "
                  f"{_fmt(det['score_abs_error_max'])} | {_fmt(det['score_abs_error_mean'])} |"]
    lw = report.get("layerwise")
    if lw:
        lines += ["", "## Layer-wise", "",
                  f"{lw['compared_tensors']} tensors compared; {lw['exceeding']} exceed normalised error "
                  f"{lw['threshold']} (max |err| / max |reference|)."]
        for title, rows in (("First tensors over the threshold (topological order)", lw["first_exceeding"]),
                            ("Worst tensors", lw["worst"])):
            lines += ["", f"### {title}", ""]
            if not rows:
                lines.append("none")
                continue
            lines += ["| tensor | " + " | ".join(STAT_COLUMNS) + " | normalised |",
                      "|" + " --- |" * (len(STAT_COLUMNS) + 2)]
            lines += [_stats_row(r["tensor"], r, [r["normalised_error"]]) for r in rows]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """``report.json`` (full, including every layer-wise row) and ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=float, allow_nan=True))
    write_atomic(out_dir / "report.md", to_markdown(report))
