"""Two sensitivity runs of one model side by side: how far did the ranking move?

Used when the way variants are quantized changes: the table shows each group's fidelity and rank
in both runs, and Spearman's rank correlation says how much of the ordering survived.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rtq.debug.sensitivity import SensitivityResult
from rtq.debug.sensitivity_report import load_result
from rtq.errors import UserError
from rtq.files import write_atomic


def ranks(result: SensitivityResult) -> dict[str, int]:
    """Group -> rank (1 = most sensitive), as `SensitivityResult.ranked` orders them."""
    return {g.group: rank for rank, g in enumerate(result.ranked(), 1)}


def spearman(first: dict[str, int], second: dict[str, int]) -> float:
    """Spearman's rank correlation of two rankings of the same groups (no ties: ranks are positions)."""
    if first.keys() != second.keys():
        raise UserError(f"the runs rank different groups: {sorted(first.keys() ^ second.keys())}")
    n = len(first)
    if n < 2:
        return 1.0
    d2 = sum((first[g] - second[g]) ** 2 for g in first)
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def diff_section(before: SensitivityResult, after: SensitivityResult) -> list[str]:
    """One pair of runs: per group, fidelity with only it in float and only it in INT8, and ranks."""
    rank_before, rank_after = ranks(before), ranks(after)
    rho = spearman(rank_before, rank_after)
    rows_before = {g.group: g for g in before.groups}
    recipe = after.settings.get("recipe")
    lines = [
        f"## {after.model}" + (f", recipe `{recipe}`" if recipe else ""),
        "",
        f"- before: `{before.command}`" if before.command else "- before: (no command recorded)",
        f"- after: `{after.command}`" if after.command else "- after: (no command recorded)",
        f"- fidelity metric: {after.fidelity_metric}",
        f"- all INT8 fidelity: before {before.int8.fidelity:.4f}, after {after.int8.fidelity:.4f}",
        f"- Spearman rank correlation: {rho:+.3f} over {len(rank_after)} groups",
        "",
        "| group | only this float: before | after | only this INT8: before | after "
        "| rank before | rank after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in after.ranked():
        b = rows_before[g.group]
        lines.append(
            f"| {g.group} | {b.only_float.fidelity:.4f} | {g.only_float.fidelity:.4f} "
            f"| {b.only_quantized.fidelity:.4f} | {g.only_quantized.fidelity:.4f} "
            f"| {rank_before[g.group]} | {rank_after[g.group]} |"
        )
    return [*lines, ""]


def diff_markdown(
    pairs: Sequence[tuple[SensitivityResult, SensitivityResult]],
    command: str,
    title: str = "",
    note: str = "",
) -> str:
    """The comparison document: the command that wrote it, an optional note, one section per pair."""
    if not pairs:
        raise UserError("give at least one --before/--after pair of sensitivity JSONs")
    heading = title or f"Sensitivity before vs after: {pairs[0][1].model}"
    lines = [f"# {heading}", "", "Produced by:", "", "```", command, "```", ""]
    if note:
        lines += [note, ""]
    for before, after in pairs:
        lines += diff_section(before, after)
    return "\n".join(lines)


def write_diff(
    pairs: Sequence[tuple[str | Path, str | Path]],
    out: str | Path,
    command: str,
    title: str = "",
    note: str = "",
) -> str:
    """Read (before, after) pairs of `sensitivity_<model>.json` files, write the comparison to `out`."""
    text = diff_markdown([(load_result(b), load_result(a)) for b, a in pairs], command, title, note)
    write_atomic(out, text)
    return text
