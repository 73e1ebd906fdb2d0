"""Mixed-precision search under an AP budget: bisection, pruning, Pareto set, rank correlation.

The search is driven by a score function; here it reads which quantizers a variant still has, so the
search's own logic (the thing under test) runs on real graphs without a compiler in the loop.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from rtq.debug.mixed_precision import Variant, pareto_front, search, spearman
from rtq.errors import UserError
from rtq.quant.qdq_edit import quantized_nodes
from tests.quant.test_qdq_edit import qdq_chain

HARM = {"conv1": 20.0, "conv2": 0.3}  # AP points each node costs when quantized


def score(model: onnx.ModelProto) -> tuple[float, float]:
    """AP = 30 minus the harm of every node still quantized; latency grows with float nodes."""
    quantized = set(quantized_nodes(model))
    floats = len(HARM) - len(quantized & set(HARM))
    return 30.0 - sum(HARM[n] for n in quantized if n in HARM), 10.0 + 5.0 * floats


def models(tmp_path: Path) -> tuple[Path, Path]:
    model, _, _ = qdq_chain()
    qdq, fp32 = tmp_path / "qdq.onnx", tmp_path / "fp32.onnx"
    onnx.save(model, qdq)
    from rtq.quant.qdq_edit import keep_float

    onnx.save(keep_float(model, ["conv1", "conv2"]), fp32)
    return qdq, fp32


def test_search_keeps_only_the_harmful_node_float_within_budget(tmp_path: Path) -> None:
    qdq, fp32 = models(tmp_path)
    ranking = [("conv1", 0.5), ("conv2", 0.01)]
    result = search(qdq, fp32, score, ranking, budget=1.0, max_compiles=20)
    assert result.chosen == ["conv1"] and result.within_budget
    assert result.chosen_ap == pytest.approx(29.7) and result.int8_ap == pytest.approx(9.7)
    assert result.compiles <= 20 and result.compiles == len(result.variants)
    assert {v.step for v in result.pareto} >= {"all INT8", "FP32 graph"}
    assert len(result.correlation_pairs) == 2 and result.rank_correlation is None  # too few pairs to rank


def test_a_misleading_proxy_costs_compiles_but_not_the_answer(tmp_path: Path) -> None:
    qdq, fp32 = models(tmp_path)
    result = search(qdq, fp32, score, [("conv2", 0.5), ("conv1", 0.01)], budget=1.0, max_compiles=20)
    assert result.chosen == ["conv1"] and result.within_budget  # pruning drops conv2 again


def test_too_small_a_budget_is_one_line(tmp_path: Path) -> None:
    qdq, fp32 = models(tmp_path)
    with pytest.raises(UserError, match="max_compiles=2 is too few"):
        search(qdq, fp32, score, [("conv1", 1.0)], budget=1.0, max_compiles=2)


def test_pareto_front_and_spearman() -> None:
    variants = [
        Variant("a", [], 10.0, 5.0, 1),
        Variant("b", ["x"], 20.0, 6.0, 2),
        Variant("c", ["x"], 15.0, 7.0, 3),
    ]
    assert [v.step for v in pareto_front(variants)] == ["a", "b"]  # c is slower and worse than b
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
