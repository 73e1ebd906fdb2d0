"""Results rows -> Markdown and CSV tables.

A row is one run's `results.json`: identity keys `experiment`, `model`, `backend`, `precision`,
`recipe`, and numbers `ap`, `ap50`, `fps_e2e`, `fps_model`, `batch_size`, `num_images` (others are
kept in the store but not tabulated). By default only the latest row of each configuration is shown,
so re-running an experiment replaces its line in the table instead of adding one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

IDENTITY_KEYS: tuple[str, ...] = ("experiment", "model", "backend", "precision", "recipe")
# (row key, column title, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("experiment", "Experiment", "s"),
    ("sweep_label", "Sweep", "s"),
    ("model", "Model", "s"),
    ("weights", "Weights", "s"),
    ("backend", "Backend", "s"),
    ("compiler", "Compiler", "s"),
    ("device", "Device", "s"),
    ("build_flags", "Build flags", "s"),
    ("precision", "Precision", "s"),
    ("recipe", "Recipe", "s"),
    ("ap", "AP", ".2f"),
    ("ap50", "AP50", ".2f"),
    ("fps_e2e", "FPS e2e", ".1f"),
    ("fps_model", "FPS model", ".1f"),
    ("batch_size", "Batch", "d"),
    ("num_images", "Images", "d"),
)
MISSING = "—"
# Columns only compiled rows fill (TensorRT: GPU, builder flags): left out of a table no row fills.
OPTIONAL_COLUMNS = frozenset({"device", "build_flags", "sweep_label"})


def columns_for(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The table's columns for these rows: every optional one only when some row has it."""
    return [c for c in COLUMNS if c[0] not in OPTIONAL_COLUMNS or any(_value(row, c[0]) for row in rows)]


def configuration_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The identity columns, plus a multirun job's overrides: the jobs of one sweep stay separate rows."""
    overrides = tuple(sorted(str(o) for o in (row.get("multirun") or {}).get("overrides", [])))
    return (*(str(row.get(key, "")) for key in IDENTITY_KEYS), *overrides)


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each configuration, in the order configurations first appear in the store."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        latest[configuration_key(row)] = row  # re-assigning a key keeps its first position
    return list(latest.values())


def sweep_label(row: dict[str, Any]) -> str:
    """`<sweep folder name> #<job>` for a row a Hydra multirun (`-m`) wrote, else ''."""
    multirun = row.get("multirun") or {}
    if not multirun:
        return ""
    return f"{str(multirun.get('dir', '')).rstrip('/').rsplit('/', 1)[-1]} #{multirun.get('job', '?')}"


def _value(row: dict[str, Any], key: str) -> Any:
    return sweep_label(row) if key == "sweep_label" else row.get(key)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = _value(row, key)
    if value is None or value == "":
        return MISSING
    if fmt == "s":
        return str(value).replace("|", "\\|")
    try:
        return format(int(value) if fmt == "d" else float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table of `rows`, as they are (no de-duplication)."""
    columns = columns_for(rows)
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    align = "| " + " | ".join("---" if fmt == "s" else "---:" for _, _, fmt in columns) + " |"
    body = ["| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in columns) + " |" for row in rows]
    return "\n".join([header, align, *body]) + "\n"


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """Throughput of each row's batch sweep (model-only, img/s), one column per batch size."""
    batches = sorted({int(point["batch"]) for row in rows for point in row.get("sweep") or []})
    swept = [row for row in rows if row.get("sweep")]
    if not batches or not swept:
        return ""
    header = "| Experiment | Model | Backend | Precision | " + " | ".join(f"batch {b} img/s" for b in batches)
    lines = [header + " |", "| --- | --- | --- | --- | " + " | ".join("---:" for _ in batches) + " |"]
    for row in swept:
        by_batch = {int(p["batch"]): float(p["throughput"]) for p in row["sweep"]}
        cells = [f"{by_batch[b]:.1f}" if b in by_batch else MISSING for b in batches]
        ident = [str(row.get(k, MISSING)) for k in ("experiment", "model", "backend", "precision")]
        lines.append("| " + " | ".join(ident + cells) + " |")
    return "\n".join(lines) + "\n"


FIDELITY_NOTE = (
    "Export fidelity: torch fake-quant vs its Q/DQ ONNX in ONNX Runtime (reference mode), max abs difference "
    "of raw outputs. float64 is the criterion (both sides in float64; `export.fidelity_tolerance`); float32 "
    "is the deployed graph, where INT8 rounding flips cascade."
)


def _fidelity_cells(row: dict[str, Any]) -> list[str]:
    f = row["fidelity"]
    within = {1.0: "yes", 0.0: "**no**"}.get(f.get("raw_float64_within_tolerance", -1.0), MISSING)
    queries = f"{int(f.get('raw_queries_selected_differently', 0))}/{int(f.get('raw_queries', 0))}"
    return [
        *(str(row.get(key, MISSING)) for key in ("experiment", "model", "recipe")),
        str(int(f.get("images", 0))),
        f"{f['raw_float64_pred_logits_max_abs']:.1e}",
        f"{f['raw_float64_pred_boxes_max_abs']:.1e}",
        within,
        f"{f.get('raw_pred_logits_max_abs', 0.0):.2g}",
        queries,
    ]


def fidelity_table(rows: Sequence[dict[str, Any]]) -> str:
    """Torch fake-quant vs exported Q/DQ ONNX on raw outputs, for rows whose export measured it."""
    measured = [row for row in rows if "raw_float64_pred_logits_max_abs" in (row.get("fidelity") or {})]
    if not measured:
        return ""
    lines = [
        "| Experiment | Model | Recipe | Images | float64 logits | float64 boxes | within tolerance "
        "| float32 logits | float32 queries selected differently |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    lines += ["| " + " | ".join(_fidelity_cells(row)) + " |" for row in measured]
    return "\n".join(lines) + "\n"


def render_markdown(rows: Sequence[dict[str, Any]], latest: bool = True) -> str:
    """The results table, then batch-sweep throughput and export fidelity; latest row per configuration."""
    selected = latest_rows(list(rows)) if latest else list(rows)
    text = markdown_table(selected)
    sweep = sweep_table(selected)
    fidelity = fidelity_table(selected)
    text += f"\nThroughput sweep (model-only, after warm-up):\n\n{sweep}" if sweep else ""
    return text + (f"\n{FIDELITY_NOTE}\n\n{fidelity}" if fidelity else "")


def render_csv(rows: Sequence[dict[str, Any]], latest: bool = True) -> str:
    """CSV with the experiment and every table column, raw (unformatted) values."""
    selected = latest_rows(list(rows)) if latest else list(rows)
    keys = [key for key, _, _ in columns_for(selected)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in selected:
        writer.writerow({key: _value(row, key) or "" for key in keys})
    return out.getvalue()
