"""The benchmark's measured figures as one nested mapping, written as JSON beside its report.

The report's tables and the hand-written analysis (`rtq.results.analysis`) both read numbers
from here, so a figure quoted in prose is always the one this run measured. Per backend, keyed
by batch as `b1`, `b4`...: fps, batch_ms (median, q1, q3), per_frame_ms, speedup (ratio of
medians over the reference), paired_speedup (median, q1, q3 of per-repetition ratios),
batch_gain (throughput over the first batch's), ort_graph (op counts of ORT's optimized graph)
and fidelity (`rtq.compare.metrics.score_fidelity_report`). OpenVINO rows add `openvino` (source,
file and compile settings), fidelity_vs_source (against ORT on the ONNX the row came from) and
layer_profile (total_ms and per `LayerType_precision` share / ms of the profiled call) and
paired_vs (its paired speed-up over each other OpenVINO row, e.g. rtq's INT8 over NNCF's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rtq.evaluate.ort_profile import SUMMARY_COLUMNS, OrtGraphProfile
from rtq.evaluate.timing import Timing, paired_speedups, quartiles


def _batch_key(batch: int) -> str:
    return f"b{batch}"


def _timing_figures(
    timings: Mapping[tuple[str, int], Timing], name: str, reference: str, goal: float
) -> dict[str, Any]:
    batches = sorted(batch for backend, batch in timings if backend == name)
    first = timings[(name, batches[0])].result()
    out: dict[str, Any] = {key: {} for key in ("fps", "batch_ms", "per_frame_ms", "batch_gain")}
    for batch in batches:
        cell, key = timings[(name, batch)], _batch_key(batch)
        result = cell.result()
        q1, q3 = cell.quartiles_ms()
        out["fps"][key] = result.throughput
        out["batch_ms"][key] = {"median": result.batch_time_ms, "q1": q1, "q3": q3}
        out["per_frame_ms"][key] = result.per_frame_ms
        out["batch_gain"][key] = result.throughput / first.throughput
        ref = timings.get((reference, batch))
        if ref is None:
            continue
        out.setdefault("speedup", {})[key] = result.throughput / ref.result().throughput
        pairs = paired_speedups(timings, reference, name, batch)
        if name != reference and pairs:
            p1, median, p3 = quartiles(pairs)
            out.setdefault("paired_speedup", {})[key] = {"median": median, "q1": p1, "q3": p3}
    paired = out.get("paired_speedup", {})
    if paired:
        out["meets_goal"] = all(p["median"] >= goal for p in paired.values())
    return out


def _paired(timings: Mapping[tuple[str, int], Timing], other: str, name: str) -> dict[str, Any]:
    """`name`'s speed over `other`'s per batch: median, q1, q3 of the per-repetition ratios."""
    out = {}
    for backend, batch in timings:
        if backend == name and (other, batch) in timings:
            pairs = paired_speedups(timings, other, name, batch)
            if pairs:
                q1, median, q3 = quartiles(pairs)
                out[_batch_key(batch)] = {"median": median, "q1": q1, "q3": q3}
    return out


def _graph_figures(profile: OrtGraphProfile, op_types: list[str]) -> dict[str, Any]:
    """The report's summary columns plus every op type seen in any profiled graph (0 if absent here)."""
    figures: dict[str, Any] = {key: profile.count(key) for _, key in SUMMARY_COLUMNS}
    figures["integer_compute"] = profile.integer_compute
    figures["ops"] = {op: profile.op_counts.get(op, 0) for op in op_types}
    return figures


def bench_figures(
    settings: Mapping[str, Any],
    environment: Mapping[str, Any],
    timings: Mapping[tuple[str, int], Timing],
    descriptions: Mapping[str, str],
    profiles: Mapping[str, OrtGraphProfile],
    fidelity: Mapping[str, Mapping[str, float]],
    reference: str,
    goal: float,
    openvino: Mapping[str, Mapping[str, Any]] | None = None,
    goals: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Every figure of one run, JSON-ready: settings, environment, then one group per backend."""
    figures: dict[str, Any] = {
        "settings": dict(settings),
        "environment": dict(environment),
        "goal_speedup": goal,
        "reference": reference,
    }
    op_types = sorted({op for profile in profiles.values() for op in profile.op_counts})
    names = list(dict.fromkeys([*descriptions, *(name for name, _ in timings)]))
    for name in names:
        group: dict[str, Any] = {"description": descriptions.get(name, name)}
        if any(backend == name for backend, _ in timings):
            group.update(_timing_figures(timings, name, reference, (goals or {}).get(name, goal)))
            if name in (goals or {}):
                group["goal_speedup"] = (goals or {})[name]
        if name in profiles:
            group["ort_graph"] = _graph_figures(profiles[name], op_types)
        if name in fidelity:
            group["fidelity"] = dict(fidelity[name])
        record = dict((openvino or {}).get(name) or {})
        if record:
            for key in ("fidelity_vs_source", "layer_profile"):
                if key in record:
                    group[key] = record.pop(key)
            group["openvino"] = record
            peers = [other for other in (openvino or {}) if other != name]
            group["paired_vs"] = {other: _paired(timings, other, name) for other in peers}
        figures[name] = group
    return figures
