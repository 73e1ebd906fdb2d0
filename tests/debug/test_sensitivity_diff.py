"""Two sensitivity runs side by side: ranks, Spearman, and the command-line file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.debug.__main__ import main
from rtq.debug.sensitivity import GroupSensitivity, Metrics, SensitivityResult
from rtq.debug.sensitivity_diff import diff_markdown, ranks, spearman
from rtq.debug.sensitivity_report import write_reports
from rtq.errors import UserError


def _result(only_float: dict[str, float], all_int8: float, command: str) -> SensitivityResult:
    groups = [GroupSensitivity(g, 1, Metrics(0.01), Metrics(f)) for g, f in only_float.items()]
    return SensitivityResult("toy", Metrics(0.0), Metrics(all_int8), groups, command=command)


def test_ranks_follow_recovery_and_spearman_reads_agreement() -> None:
    before = _result({"a": 0.1, "b": 0.3, "c": 0.5}, 0.6, "before")
    assert ranks(before) == {"a": 1, "b": 2, "c": 3}  # keeping `a` in float removes the most error
    reversed_ = _result({"a": 0.5, "b": 0.3, "c": 0.1}, 0.6, "after")
    assert spearman(ranks(before), ranks(before)) == 1.0
    assert spearman(ranks(before), ranks(reversed_)) == -1.0
    with pytest.raises(UserError, match="different groups"):
        spearman(ranks(before), {"a": 1, "b": 2, "d": 3})


def test_table_has_both_fidelities_and_ranks_per_group() -> None:
    text = diff_markdown(
        [(_result({"a": 0.1, "b": 0.3}, 0.6, "run 1"), _result({"a": 0.4, "b": 0.2}, 0.5, "run 2"))], "cmd"
    )
    assert "```\ncmd\n```" in text and "`run 1`" in text and "`run 2`" in text
    assert "before 0.6000, after 0.5000" in text
    assert "Spearman rank correlation: -1.000 over 2 groups" in text
    assert "| b | 0.3000 | 0.2000 | 0.0100 | 0.0100 | 2 | 1 |" in text
    assert "| a | 0.1000 | 0.4000 | 0.0100 | 0.0100 | 1 | 2 |" in text


def test_command_line_writes_the_comparison(tmp_path: Path) -> None:
    before, _ = write_reports(_result({"a": 0.1, "b": 0.3}, 0.6, "r1"), tmp_path / "before")
    after, _ = write_reports(_result({"a": 0.1, "b": 0.3}, 0.6, "r2"), tmp_path / "after")
    out = tmp_path / "diff.md"
    argv = ["sensitivity-diff", "--before", str(before), "--after", str(after), "--out", str(out)]
    assert main([*argv, "--note", "why"]) == 0
    text = out.read_text()
    assert text.startswith("# Sensitivity before vs after: toy\n")
    assert " ".join(argv) in text and "\nwhy\n" in text and text.count("## toy") == 1
    with pytest.raises(SystemExit):
        main([*argv, "--before", str(before)])  # a run without its pair
