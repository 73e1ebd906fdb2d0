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
    ("model", "Model", "s"),
    ("backend", "Backend", "s"),
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


def configuration_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(key, "")) for key in IDENTITY_KEYS)


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each configuration, in the order configurations first appear in the store."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        latest[configuration_key(row)] = row  # re-assigning a key keeps its first position
    return list(latest.values())


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
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
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    align = "| " + " | ".join("---" if fmt == "s" else "---:" for _, _, fmt in COLUMNS) + " |"
    body = ["| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |" for row in rows]
    return "\n".join([header, align, *body]) + "\n"


def render_markdown(rows: Sequence[dict[str, Any]], latest: bool = True) -> str:
    """One section per experiment, each a table; the latest row per configuration unless `latest=False`."""
    selected = latest_rows(list(rows)) if latest else list(rows)
    experiments: dict[str, list[dict[str, Any]]] = {}
    for row in selected:
        experiments.setdefault(str(row.get("experiment", "") or "(no experiment)"), []).append(row)
    sections = [f"## {name}\n\n{markdown_table(group)}" for name, group in experiments.items()]
    return "\n".join(sections)


def render_csv(rows: Sequence[dict[str, Any]], latest: bool = True) -> str:
    """CSV with the experiment and every table column, raw (unformatted) values."""
    selected = latest_rows(list(rows)) if latest else list(rows)
    keys = ["experiment", *(key for key, _, _ in COLUMNS)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in selected:
        writer.writerow({key: row.get(key, "") for key in keys})
    return out.getvalue()
