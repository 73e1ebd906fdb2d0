"""Find the smallest set of extra outputs that stops a harmful TensorRT fusion, by group testing.

Marking a tensor as a graph output forces TensorRT to materialise it, which splits any fusion
across it. If an engine is wrong because of one bad fusion, marking *some* tensor inside that
fusion restores accuracy. With n candidate tensors and d bad fusions, the search below needs about
d * log2(n) oracle builds instead of n:

  1. mark nothing (error high) and mark every candidate (error low), which fixes the threshold;
  2. binary-search the shortest prefix of the topologically ordered candidates that is enough
     (together with what was found so far); its last tensor is needed -> add it, shrink the prefix,
     repeat until the found tensors alone are enough;
  3. drop any found tensor that is not needed, and list, per found tensor, the other tensors of its
     structural cluster that fix the same fusion (verified with the oracle).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from rtq.debug.oracles import Oracle
from rtq.debug.structure import Candidate, find_candidates, find_fusion_clusters
from rtq.errors import UserError
from rtq.files import save_onnx_atomic, write_atomic
from rtq.onnx_graph import mark_outputs

DEFAULT_THRESHOLD_FRACTION = 0.05
STATUS_MEANING = {
    "localized": "marking the minimal set below brings the error under the threshold",
    "no_error": "the unmarked build is already within the threshold",
    "not_fixed_by_marking": "even with every candidate marked the error stays above the threshold",
    "marking_changes_little": "no fusion changes the output by more than the threshold: marking every "
    "candidate removes under a quarter of the error, so the error is not a fusion's",
}
# Without an explicit threshold, an unmarked error below this is no error at all.
NO_ERROR_FLOOR = 1e-3
# Marking every candidate must remove at least this share of the error before a fusion is blamed.
MIN_GAIN_FRACTION = 0.25


@dataclass
class BuildRecord:
    """One oracle build: how many tensors were marked and the error it gave."""

    step: str
    marked: int
    error: float
    passed: bool


@dataclass
class LocalizationResult:
    """What the search found and what it cost."""

    status: str  # "localized" | "no_error" | "not_fixed_by_marking" | "marking_changes_little"
    minimal_set: list[str]
    equivalents: dict[str, list[str]]
    error_before: float
    error_after: float
    error_all_marked: float
    threshold: float
    builds: int
    num_candidates: int
    candidates: list[Candidate] = field(default_factory=list)
    trace: list[BuildRecord] = field(default_factory=list)
    patched_onnx: str | None = None
    changed_layers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (candidates listed by tensor name and kind)."""
        data = asdict(self)
        data["candidates"] = [{"tensor": c.tensor, "node": c.node, "kind": c.kind} for c in self.candidates]
        data["log2_candidates"] = math.log2(max(self.num_candidates, 1))
        return data


class _CountingSearch:
    """Oracle wrapper that never builds the same marking twice and records every build."""

    def __init__(self, oracle: Oracle, threshold: float | None = None) -> None:
        self.oracle = oracle
        self.cache: dict[frozenset[str], float] = {}
        self.trace: list[BuildRecord] = []
        self.threshold = threshold if threshold is not None else math.nan
        self.builds = 0

    def error(self, marked: frozenset[str], step: str) -> float:
        if marked not in self.cache:
            self.builds += 1
            self.cache[marked] = float(self.oracle.evaluate(marked))
            self.trace.append(
                BuildRecord(step, len(marked), self.cache[marked], self.cache[marked] <= self.threshold)
            )
        return self.cache[marked]

    def fixed(self, marked: frozenset[str], step: str) -> bool:
        return self.error(marked, step) <= self.threshold


def localize(
    model: onnx.ModelProto | str | Path,
    oracle: Oracle,
    *,
    include: str | None = None,
    threshold: float | None = None,
    verify_equivalents: bool = True,
    out_dir: str | Path | None = None,
    name: str | None = None,
    candidates: list[Candidate] | None = None,
) -> LocalizationResult:
    """Search the candidates of `model` for a minimal set of extra outputs that brings the error down.

    `candidates` default to the graph's structural candidates (an oracle may supply its own, e.g.
    the tensors inside a compiler's fused layers); `include` (regex) restricts them; `threshold` is
    the error counted as fixed (default: 5 % of the way from the all-marked error to the unmarked
    one). With `out_dir`, writes `report.json`, `report.md` and the patched ONNX there.
    """
    started = time.perf_counter()
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if candidates is None:
        candidates = find_candidates(proto, include)
    if not candidates:
        raise UserError(f"no candidate tensors{f' match --include {include!r}' if include else ''}; widen it")
    order = [c.tensor for c in candidates]
    search = _CountingSearch(oracle)
    search.threshold = math.inf  # decided after the two anchor builds
    error_before = search.error(frozenset(), "nothing marked")
    error_all = search.error(frozenset(order), "all candidates marked")
    search.threshold = (
        threshold
        if threshold is not None
        else error_all + DEFAULT_THRESHOLD_FRACTION * max(error_before - error_all, 0.0)
    )
    for record in search.trace:
        record.passed = record.error <= search.threshold

    found: list[str] = []
    status = "localized"
    if error_before <= (threshold if threshold is not None else NO_ERROR_FLOOR):
        status = "no_error"
    elif threshold is None and error_before - error_all < MIN_GAIN_FRACTION * error_before:
        status = "marking_changes_little"  # no marking moves the error enough to blame a fusion
    elif error_before <= search.threshold:
        status = "no_error"
    elif error_all > search.threshold:
        status = "not_fixed_by_marking"
    else:
        found = _search(order, search)
        found = _minimise(found, search)
    equivalents = _equivalents(proto, candidates, found, search) if verify_equivalents and found else {}
    error_after = search.error(frozenset(found), "minimal set") if found else error_before

    result = LocalizationResult(
        status=status,
        minimal_set=found,
        equivalents=equivalents,
        error_before=error_before,
        error_after=error_after,
        error_all_marked=error_all,
        threshold=search.threshold,
        builds=search.builds,
        num_candidates=len(candidates),
        candidates=candidates,
        trace=search.trace,
    )
    fusion_diff = getattr(oracle, "fusion_diff", None)
    if found and callable(fusion_diff):
        result.changed_layers = list(fusion_diff(frozenset(), frozenset(found)))
    result.seconds = time.perf_counter() - started
    if out_dir is not None:
        write_report(result, proto, Path(out_dir), source_name=name or _stem(model))
    return result


def _search(order: list[str], search: _CountingSearch) -> list[str]:
    """Adaptive prefix bisection; invariant: found + order[:limit] fixes the error."""
    found: list[str] = []
    limit = len(order)
    while not search.fixed(frozenset(found), f"check {len(found)} found"):
        low, high = 0, limit  # found + order[:low] fails, found + order[:high] fixes
        while high - low > 1:
            middle = (low + high) // 2
            if search.fixed(frozenset(found) | frozenset(order[:middle]), f"bisect [0:{middle}]"):
                high = middle
            else:
                low = middle
        found.append(order[high - 1])
        limit = high - 1
    return found


def _minimise(found: list[str], search: _CountingSearch) -> list[str]:
    """Drop every found tensor whose removal still leaves the error fixed."""
    kept = list(found)
    for tensor in list(found):
        trial = [t for t in kept if t != tensor]
        if len(kept) > 1 and search.fixed(frozenset(trial), f"drop {tensor}"):
            kept = trial
    return kept


def _equivalents(
    model: onnx.ModelProto, candidates: list[Candidate], found: list[str], search: _CountingSearch
) -> dict[str, list[str]]:
    """For each found tensor, the candidates of its structural cluster that fix the error as well."""
    candidate_names = {c.tensor for c in candidates}
    clusters = find_fusion_clusters(
        model, min_branches=1, ops=frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
    )
    peers: dict[str, list[str]] = {}
    for tensor in found:
        for cluster in clusters:
            if tensor in cluster.tensors:
                members = [t for t in cluster.tensors if t in candidate_names and t != tensor]
                rest = frozenset(found) - {tensor}
                peers[tensor] = [m for m in members if search.fixed(rest | {m}, f"equivalent {m}")]
                break
        else:
            peers[tensor] = []
    return peers


def _stem(model: onnx.ModelProto | str | Path) -> str:
    return Path(model).stem if isinstance(model, (str, Path)) else "model"


def write_report(result: LocalizationResult, model: onnx.ModelProto, out_dir: Path, source_name: str) -> None:
    """Write the patched ONNX, `report.json` and `report.md` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.minimal_set:
        patched = out_dir / f"{source_name}.localized.onnx"
        save_onnx_atomic(mark_outputs(model, sorted(result.minimal_set)), patched)
        result.patched_onnx = str(patched)
    write_atomic(out_dir / "report.json", json.dumps(result.to_json(), indent=2) + "\n")
    write_atomic(out_dir / "report.md", render_markdown(result, source_name))


def render_markdown(result: LocalizationResult, source_name: str) -> str:
    """Human-readable summary: the answer first, then the cost and every build."""
    lines = [
        f"# Fusion-bug localisation: {source_name}",
        "",
        f"- status: **{result.status}**: {STATUS_MEANING.get(result.status, '')}",
        f"- candidates: {result.num_candidates} (log2 = {math.log2(max(result.num_candidates, 1)):.1f})",
        f"- oracle builds: **{result.builds}**",
        f"- error before (nothing marked): {result.error_before:.4g}",
        f"- error with all candidates marked: {result.error_all_marked:.4g}",
        f"- threshold: {result.threshold:.4g}",
        f"- error after (minimal set marked): {result.error_after:.4g}",
        f"- time: {result.seconds:.1f} s",
    ]
    if result.patched_onnx:
        lines.append(f"- patched ONNX: `{Path(result.patched_onnx).name}`")
    lines += ["", "## Minimal set of extra outputs", ""]
    if not result.minimal_set:
        lines.append("(none)")
    for tensor in result.minimal_set:
        lines.append(f"- `{tensor}`")
        equivalent = result.equivalents.get(tensor, [])
        if equivalent:
            lines.append(
                "  - equivalent (each fixes the same fusion): " + ", ".join(f"`{t}`" for t in equivalent)
            )
    if result.changed_layers:
        lines += ["", "## Engine layers whose fusion changed", ""]
        lines += [f"- {layer}" for layer in result.changed_layers]
    lines += ["", "## Builds", "", "| # | step | marked | error | fixed |", "| --- | --- | --- | --- | --- |"]
    for i, record in enumerate(result.trace, 1):
        lines.append(
            f"| {i} | {record.step} | {record.marked} | {record.error:.4g} "
            f"| {'yes' if record.passed else 'no'} |"
        )
    return "\n".join(lines) + "\n"
