"""Auto recipe: greedy float fallback on a sensitivity ranking, emitted in the pipeline's recipe schemas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from rtq.debug.auto_recipe import greedy_float_groups, onnx_recipe_dict, recipe_dict, write_recipe
from rtq.debug.sensitivity import GroupSensitivity, Metrics, SensitivityResult
from rtq.debug.sensitivity_report import load_result, write_reports
from rtq.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _ranking() -> SensitivityResult:
    """A ranking shaped like YOLOX-Nano's: one group recovers almost everything, one a little."""
    return SensitivityResult(
        model="toy",
        fp32=Metrics(0.0, 30.0, 45.0),
        int8=Metrics(0.5, 2.0, 3.0),
        groups=[
            GroupSensitivity("neck", 10, Metrics(0.1, 29.0), Metrics(0.5, 2.1)),
            GroupSensitivity("dark2", 26, Metrics(0.5, 2.5), Metrics(0.3, 28.5)),
            GroupSensitivity("dark4", 46, Metrics(0.2, 29.5), Metrics(0.5, 2.6)),
        ],
        command="python -m rtq.debug sensitivity --model toy",
        settings={"calibration_images": 16, "method": "max"},
    )


def _additive_ap(float_groups: Sequence[str]) -> Metrics:
    """AP of a float set: each group's own recovery, summed (enough to drive the greedy loop)."""
    ranking = _ranking()
    base = float(ranking.int8.ap or 0.0)
    gain = sum(float(g.only_float.ap or 0.0) - base for g in ranking.groups if g.group in float_groups)
    return Metrics(0.1, base + gain)


def test_greedy_stops_at_the_target() -> None:
    chosen = greedy_float_groups(_ranking(), _additive_ap, max_ap_drop=1.0)
    assert chosen.met and chosen.float_groups == ["dark2", "dark4"]
    assert [s.float_groups for s in chosen.steps] == [[], ["dark2"], ["dark2", "dark4"]]
    unreachable = greedy_float_groups(_ranking(), _additive_ap, max_ap_drop=0.01)
    assert not unreachable.met and unreachable.float_groups == ["dark2", "dark4", "neck"]
    with pytest.raises(UserError, match="needs a target"):
        greedy_float_groups(_ranking(), _additive_ap)


def test_onnx_recipe_has_the_schema_the_quantize_stage_reads(tmp_path: Path) -> None:
    shipped = yaml.safe_load((REPO / "conf" / "quant" / "onnx_int8_max.yaml").read_text())
    recipe = onnx_recipe_dict("onnx_auto", ["^Conv_44$"], "test", method="max", calib_images=16)
    assert set(recipe) == set(shipped)
    assert set(recipe["calib"]) == set(shipped["calib"])
    assert recipe["level"] == "onnx" and recipe["exclude_nodes"] == ["^Conv_44$"]
    written = write_recipe(recipe, tmp_path / "onnx_auto.yaml", header="Produced by: test")
    assert written.read_text().startswith("# Produced by: test\n")
    assert yaml.safe_load(written.read_text()) == recipe
    torch_recipe = recipe_dict("auto", ["*backbone*"], "test")
    assert "level" not in torch_recipe and torch_recipe["exclude"] == ["*backbone*"]


def test_committed_onnx_auto_recipe_matches_schema() -> None:
    shipped = yaml.safe_load((REPO / "conf" / "quant" / "onnx_int8_max.yaml").read_text())
    auto = yaml.safe_load((REPO / "conf" / "quant" / "onnx_int8_auto.yaml").read_text())
    assert set(auto) == set(shipped) and auto["level"] == "onnx"
    assert auto["exclude_nodes"] and all(n.startswith("^") and n.endswith("$") for n in auto["exclude_nodes"])


def test_ranking_round_trips_through_json(tmp_path: Path) -> None:
    json_path, _ = write_reports(_ranking(), tmp_path, stem="sensitivity_toy")
    assert load_result(json_path) == _ranking()
    with pytest.raises(UserError, match="does not exist"):
        load_result(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"model": "x"}')
    with pytest.raises(UserError, match="not a sensitivity JSON"):
        load_result(tmp_path / "other.json")
