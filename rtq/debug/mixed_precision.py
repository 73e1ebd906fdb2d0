"""Mixed precision under an AP budget, measured on the real compiler, in a bounded number of compiles.

Which layers to keep in float is usually chosen by hand or on a proxy (torch or ONNX Runtime
sensitivity) that can disagree with what the compiler does. Here every candidate variant of one
Q/DQ graph (some compute nodes kept float by `rtq.quant.qdq_edit.keep_float`, no recalibration) is
compiled by OpenVINO and scored by COCO AP on the dataset, with its latency. The cheap proxy only
orders the search: ONNX Runtime's output error with only that node quantized (no compile). The search
bisects the proxy-ordered prefix for the fewest float nodes within the budget, prunes the set, and
spends what is left of the compile budget on "only this node INT8" variants spread over the proxy
order, to measure how well the proxy ranks the compiler's real AP drop (Spearman rank correlation).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rtq.errors import UserError


@dataclass
class Variant:
    """One compiled variant: which nodes stayed float, its AP and model latency."""

    step: str
    float_nodes: list[str]
    ap: float
    ms_per_image: float
    compile_index: int


@dataclass
class MixedPrecisionResult:
    budget: float
    fp32_ap: float
    int8_ap: float
    chosen: list[str]
    chosen_ap: float
    within_budget: bool
    compiles: int
    max_compiles: int
    variants: list[Variant]
    pareto: list[Variant]
    proxy_ranking: list[tuple[str, float]]
    rank_correlation: float | None
    correlation_pairs: list[tuple[str, float, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        counts = {
            "chosen_count": len(self.chosen),
            "candidates": len(self.proxy_ranking),
            "pairs": len(self.correlation_pairs),
        }
        return {**asdict(self), **counts}


class CompilerBudget:
    """Compiles and scores variants, never the same set twice, and refuses past `max_compiles`."""

    def __init__(
        self, score: Callable[[onnx.ModelProto], tuple[float, float]], qdq: onnx.ModelProto, max_compiles: int
    ) -> None:
        from rtq.quant.qdq_edit import keep_float

        self._keep_float = keep_float
        self._score = score
        self.qdq = qdq
        self.max_compiles = max_compiles
        self.variants: list[Variant] = []
        self._cache: dict[frozenset[str], Variant] = {}

    @property
    def left(self) -> int:
        return self.max_compiles - len(self.variants)

    def measure(self, float_nodes: Sequence[str], step: str) -> Variant:
        """The Q/DQ graph with `float_nodes` kept float (each distinct set compiled once)."""
        key = frozenset(float_nodes)
        if key not in self._cache:
            self._cache[key] = self.score(self._keep_float(self.qdq, float_nodes), step, list(float_nodes))
        return self._cache[key]

    def score(self, model: onnx.ModelProto, step: str, float_nodes: list[str] | None = None) -> Variant:
        """Compile and score one graph (one compile of the budget)."""
        if self.left <= 0:
            raise RuntimeError("compile budget spent")
        ap, ms = self._score(model)
        variant = Variant(step, float_nodes or [], ap, ms, len(self.variants) + 1)
        self.variants.append(variant)
        return variant


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None below three pairs or without spread."""
    if len(a) < 3:
        return None

    def ranks(values: Sequence[float]) -> np.ndarray:
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values), dtype=float)
        array = np.asarray(values, dtype=float)
        for value in np.unique(array):
            ties = array == value
            ranked[ties] = ranked[ties].mean()
        return ranked

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def pareto_front(variants: Sequence[Variant]) -> list[Variant]:
    """Variants no other variant beats on both AP (higher) and latency (lower), fastest first."""
    front = [
        v
        for v in variants
        if not any(
            (o.ap >= v.ap and o.ms_per_image <= v.ms_per_image)
            and (o.ap > v.ap or o.ms_per_image < v.ms_per_image)
            for o in variants
        )
    ]
    return sorted(front, key=lambda v: v.ms_per_image)


def proxy_ranking(
    qdq: onnx.ModelProto,
    nodes: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    fp32_outputs: Sequence[dict[str, np.ndarray]],
) -> list[tuple[str, float]]:
    """Per node, ONNX Runtime's output error vs FP32 with only that node quantized, most harmful first.

    "Only this one INT8" measures a node's own damage; "only this one float" would not, because with
    everything else quantized one node more or less in float rarely changes the outcome."""
    from rtq.compare.metrics import metric
    from rtq.quant.qdq_edit import keep_float

    error = metric("relative_l2")

    def run(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return [dict(zip(names, session.run(None, feed), strict=True)) for feed in feeds]

    damage = [
        (node, error(fp32_outputs, run(keep_float(qdq, [n for n in nodes if n != node])))) for node in nodes
    ]
    return sorted(damage, key=lambda item: -item[1])


def search(
    qdq_path: Path,
    fp32_path: Path,
    score: Callable[[onnx.ModelProto], tuple[float, float]],
    ranking: Sequence[tuple[str, float]],
    budget: float,
    max_compiles: int = 20,
) -> MixedPrecisionResult:
    """Fewest float nodes (proxy order) with AP >= FP32 AP - budget; Pareto set; proxy-vs-compiler."""
    started = time.perf_counter()
    if max_compiles < 4:
        raise UserError(
            f"max_compiles={max_compiles} is too few: the two anchors and a search need at least 4"
        )
    qdq = onnx.load(str(qdq_path))
    compiler = CompilerBudget(score, qdq, max_compiles)
    fp32 = compiler.score(onnx.load(str(fp32_path)), "FP32 graph")
    int8 = compiler.measure([], "all INT8")
    target = fp32.ap - budget
    order = [node for node, _ in ranking]

    reserve_for_correlation = min(6, max(0, max_compiles - 14))
    lo, hi = 0, len(order)  # invariant: prefix lo fails (or is 0), prefix hi passes (all float ~ FP32)
    if int8.ap >= target:
        hi = 0
    while hi - lo > 1 and compiler.left > reserve_for_correlation + 1:
        mid = (lo + hi) // 2
        if compiler.measure(order[:mid], f"prefix {mid}").ap >= target:
            hi = mid
        else:
            lo = mid
    chosen = order[:hi]
    for node in reversed(list(chosen)):  # prune: drop what the compiler says is not needed
        if len(chosen) <= 1 or compiler.left <= reserve_for_correlation + 1:
            break
        trial = [n for n in chosen if n != node]
        if compiler.measure(trial, f"without {node}").ap >= target:
            chosen = trial
    chosen_variant = compiler.measure(chosen, f"chosen ({len(chosen)} float)") if chosen else int8

    pairs: list[tuple[str, float, float]] = []  # (node, proxy error, compiler AP drop), "only it INT8"
    proxy = dict(ranking)
    for node in _spread(order, compiler.left):
        variant = compiler.measure([n for n in order if n != node], f"only {node} INT8")
        pairs.append((node, proxy[node], fp32.ap - variant.ap))
    correlation = spearman([p[1] for p in pairs], [p[2] for p in pairs])
    return MixedPrecisionResult(
        budget=budget,
        fp32_ap=fp32.ap,
        int8_ap=int8.ap,
        chosen=chosen,
        chosen_ap=chosen_variant.ap,
        within_budget=chosen_variant.ap >= target,
        compiles=len(compiler.variants),
        max_compiles=max_compiles,
        variants=compiler.variants,
        pareto=pareto_front([v for v in compiler.variants if v.step != "FP32 graph"] + [fp32]),
        proxy_ranking=list(ranking),
        rank_correlation=correlation,
        correlation_pairs=pairs,
        seconds=time.perf_counter() - started,
    )


def _spread(ordered: Sequence[str], count: int) -> list[str]:
    """`count` items spread over the proxy order (top, middle, bottom), so ranks can be compared."""
    if count <= 0 or not ordered:
        return []
    if count >= len(ordered):
        return list(ordered)
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in dict.fromkeys(picks.tolist())]


def openvino_ap_scorer(
    io: Any, dataset: Any, settings: Any, batch_size: int = 1, timing_runs: int = 20
) -> Callable[[onnx.ModelProto], tuple[float, float]]:
    """Score = (COCO AP, median model ms per image) of a graph compiled by OpenVINO: AP over
    `dataset`, latency as the median of `timing_runs` single-image calls after the AP pass."""
    from rtq.backends.openvino.runner import make_openvino_runner
    from rtq.evaluate.loop import evaluate_detector
    from rtq.files import save_onnx_atomic

    feed, _ = io.preprocess([dataset.load_image(dataset.images[0])])

    def score(model: onnx.ModelProto) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="rtq-mixed-") as tmp:
            path = Path(tmp) / "variant.onnx"
            save_onnx_atomic(model, path)
            runner = make_openvino_runner(path, settings)
            with runner:
                result = evaluate_detector(runner, io, dataset, batch_size, progress=False)
                times = []
                for _ in range(timing_runs):
                    started = time.perf_counter()
                    runner.infer(feed)
                    times.append(time.perf_counter() - started)
        return float(result.stats["ap"]), 1000.0 * float(np.median(times))

    return score


def render_markdown(result: MixedPrecisionResult, title: str, command: str) -> str:
    """The answer first (chosen set, AP, compiles), then the Pareto set, the proxy check, every compile."""
    corr = "n/a" if result.rank_correlation is None else f"{result.rank_correlation:+.2f}"
    chosen = ", ".join(f"`{n}`" for n in result.chosen) or "(none)"
    verdict = "within" if result.within_budget else "NOT within"
    lines = [
        f"# {title}",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"- budget: at most {result.budget:g} AP below FP32 (FP32 AP {result.fp32_ap:.2f}, all INT8 AP "
        f"{result.int8_ap:.2f})",
        f"- chosen float set ({len(result.chosen)} nodes): {chosen}",
        f"- chosen AP: **{result.chosen_ap:.2f}** ({verdict} budget)",
        f"- compiles: **{result.compiles}** of at most {result.max_compiles}; time {result.seconds:.0f} s",
        f"- proxy (ONNX Runtime output error, only that node INT8) vs the compiler's AP drop for the "
        f"same variant, Spearman over {len(result.correlation_pairs)} nodes spread over the proxy order: "
        f"**{corr}**",
        "",
        "## AP / latency Pareto set",
        "",
        "| variant | float nodes | AP | ms/img |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {v.step} | {len(v.float_nodes)} | {v.ap:.2f} | {v.ms_per_image:.1f} |" for v in result.pareto
    ]
    lines += [
        "",
        "## Proxy vs compiler (only that node INT8)",
        "",
        "| node | proxy error | compiler AP drop |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| `{n}` | {p:.4f} | {a:+.2f} |" for n, p, a in result.correlation_pairs]
    lines += [
        "",
        "## Every compile",
        "",
        "| # | variant | float nodes | AP | ms/img |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {v.compile_index} | {v.step} | {len(v.float_nodes)} | {v.ap:.2f} | {v.ms_per_image:.1f} |"
        for v in result.variants
    ]
    lines += [
        "",
        "Latency: median of 20 single-image calls of each compiled variant after its AP pass (batch 1); "
        "a ranking aid measured in the search, not a benchmark figure (see the bench reports).",
    ]
    return "\n".join(lines) + "\n"
