"""Sensitivity results on disk: the JSON (read back by the auto recipe) and the ranked Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rtq.debug.sensitivity import GroupSensitivity, Metrics, SensitivityResult, recovery
from rtq.errors import UserError
from rtq.files import write_atomic


def _bar(value: float, scale: float, width: int = 30) -> str:
    filled = int(round(width * max(value, 0.0) / scale)) if scale > 0 else 0
    return "█" * filled + "·" * (width - filled)


def render_markdown(result: SensitivityResult) -> str:
    """Ranked table plus a text bar chart of what leaving each group in float recovers."""
    has_ap = result.int8.ap is not None
    lines = [f"# Quantization sensitivity: {result.model}", ""]
    if result.command:
        lines += ["Produced by:", "", "```", result.command, "```", ""]
    lines += [
        f"- fidelity metric: {result.fidelity_metric} (calibration images)",
        f"- FP32: AP {result.fp32.ap}  |  all INT8: AP {result.int8.ap}, fidelity {result.int8.fidelity:.4f}",
        f"- settings: {json.dumps(result.settings)}",
        f"- time: {result.seconds:.0f} s",
        "",
    ]
    header = "| rank | group | size | only this INT8: fidelity | only this float: fidelity |"
    rule = "| --- | --- | --- | --- | --- |"
    if has_ap:
        header += " only this INT8: AP | only this float: AP | AP recovered |"
        rule += " --- | --- | --- |"
    lines += [header, rule]
    ranked = result.ranked()
    for rank, g in enumerate(ranked, 1):
        row = (
            f"| {rank} | {g.group} | {g.size} "
            f"| {g.only_quantized.fidelity:.4f} | {g.only_float.fidelity:.4f} |"
        )
        if has_ap:
            row += f" {g.only_quantized.ap:.2f} | {g.only_float.ap:.2f} | {recovery(result, g):+.2f} |"
        lines.append(row)
    what = "AP points recovered by keeping the group in float" if has_ap else "fidelity error removed"
    scale = max((recovery(result, g) for g in ranked), default=0.0)
    lines += ["", f"## {what}", "", "```"]
    for g in ranked:
        lines.append(f"{g.group:>20} {_bar(recovery(result, g), scale)} {recovery(result, g):+.3f}")
    lines += ["```", ""]
    return "\n".join(lines)


def load_result(path: str | Path) -> SensitivityResult:
    """Read a `write_reports` JSON back, so a recipe can be derived without measuring again."""
    source = Path(path)
    if not source.is_file():
        raise UserError(
            f"sensitivity JSON {str(source)!r} does not exist; run `python -m rtq.debug sensitivity` first"
        )
    data = json.loads(source.read_text())
    try:
        groups = [
            GroupSensitivity(
                group=g["group"],
                size=int(g["size"]),
                only_quantized=Metrics(**g["only_quantized"]),
                only_float=Metrics(**g["only_float"]),
            )
            for g in data["groups"]
        ]
        return SensitivityResult(
            model=data["model"],
            fp32=Metrics(**data["fp32"]),
            int8=Metrics(**data["int8"]),
            groups=groups,
            fidelity_metric=data.get("fidelity_metric", ""),
            command=data.get("command", ""),
            settings=dict(data.get("settings") or {}),
            seconds=float(data.get("seconds", 0.0)),
        )
    except (KeyError, TypeError) as err:
        raise UserError(f"{str(source)!r} is not a sensitivity JSON (missing {err}); regenerate it") from None


def write_reports(
    result: SensitivityResult, out_dir: str | Path, stem: str = "sensitivity"
) -> tuple[Path, Path]:
    """`<stem>.json` and `<stem>.md` in `out_dir`, each written under a temporary name first."""
    out = Path(out_dir)
    json_path = write_atomic(out / f"{stem}.json", json.dumps(asdict(result), indent=2) + "\n")
    md_path = write_atomic(out / f"{stem}.md", render_markdown(result))
    return json_path, md_path
