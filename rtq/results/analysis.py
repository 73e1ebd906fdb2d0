"""Hand-written analysis whose numbers come from the run: `{{dotted.figure}}` placeholders.

A person writes the reasoning in a separate file beside a generated report; every measured
number in it is a placeholder filled from the figures the run wrote (a nested JSON mapping), so
regenerating the report can never leave the prose quoting numbers from an older run. A
placeholder that names no figure fails the rendering with one line, instead of printing a stale
or empty value. `{{name:.2f}}` applies a format spec; without one floats get 3 significant digits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtq.errors import UserError

ANALYSIS_HEADING = "## Analysis (hand-written; figures filled from this run)"
PLACEHOLDER = re.compile(r"\{\{\s*([^{}:\s]+)\s*(?::([^{}]*))?\}\}")
DEFAULT_FLOAT_FORMAT = ".3g"


def lookup(figures: Mapping[str, Any], name: str, source: str = "analysis") -> Any:
    """The figure at dotted path `name`, or a `UserError` saying which part is missing."""
    node: Any = figures
    walked: list[str] = []
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(walked) or "the top level"
            known = ", ".join(sorted(map(str, node))[:15]) if isinstance(node, Mapping) else "none"
            raise UserError(
                f"{source}: placeholder {{{{{name}}}}} names no figure of this run ('{part}' is not under "
                f"{where}; there: {known}); fix the placeholder or make the run write that figure"
            )
        node = node[part]
        walked.append(part)
    if isinstance(node, Mapping):
        raise UserError(
            f"{source}: placeholder {{{{{name}}}}} is a group of figures ({', '.join(sorted(node))}), "
            "not one figure; name one of them"
        )
    return node


def format_figure(value: Any, spec: str | None, name: str = "", source: str = "analysis") -> str:
    """One figure as text: `spec` if given, 3 significant digits for floats, lists comma-joined."""
    if isinstance(value, list | tuple):
        return ", ".join(format_figure(v, spec, name, source) for v in value)
    if spec is None:
        return format(value, DEFAULT_FLOAT_FORMAT) if isinstance(value, float) else str(value)
    try:
        return format(value, spec.strip())
    except (TypeError, ValueError):
        raise UserError(
            f"{source}: format '{spec}' in {{{{{name}:{spec}}}}} does not apply to {value!r}; "
            "use a Python format spec such as .2f"
        ) from None


def render_analysis(template: str, figures: Mapping[str, Any], source: str = "analysis") -> str:
    """`template` with every `{{name}}` / `{{name:spec}}` replaced by the figure it names."""

    def fill(match: re.Match[str]) -> str:
        name, spec = match.group(1), match.group(2)
        return format_figure(lookup(figures, name, source), spec, name, source)

    return PLACEHOLDER.sub(fill, template)


def analysis_section(path: Path, figures: Mapping[str, Any]) -> str:
    """The rendered analysis under its heading, or "" when no analysis file exists beside the report."""
    if not path.is_file():
        return ""
    body = render_analysis(path.read_text(), figures, source=str(path)).strip("\n")
    note = f"Written by hand in `{path.name}`; every measured number in it is filled from this run."
    return f"{ANALYSIS_HEADING}\n\n{note}\n\n{body}\n"


def store_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of a results store for an analysis: the latest row per experiment, by experiment name,
    with its batch sweep keyed `sweep.b<batch>` (throughput in images/s)."""
    figures: dict[str, Any] = {}
    for row in rows:
        entry = dict(row)
        sweep = row.get("sweep") or []
        entry["sweep"] = {f"b{int(point['batch'])}": float(point["throughput"]) for point in sweep}
        figures[str(row.get("experiment"))] = entry
    return figures
