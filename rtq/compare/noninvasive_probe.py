"""The probe of a non-invasive compare: which tensors to mark, and proof that marking them changed nothing.

From the unmarked compile's runtime layers, each layer's ONNX outputs that leave the layer (what the
compiled model materialises anyway) are marked; the marked compile must give bit-identical final
outputs on the same feeds and the same fusion groups as the unmarked one. Markings that change
either are found (fusion attribution, then bisection), dropped and named. `StreamingStats` then
accumulates the error of each kept tensor one feed at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rtq.backends.layers import EngineLayer, diff_engines
from rtq.backends.openvino.compile import OpenVinoSettings, compile_model, onnx_io_names, read_model
from rtq.backends.openvino.inspect import runtime_layers
from rtq.backends.openvino.runner import OpenVinoRunner
from rtq.compare.noninvasive_modules import OnnxIndex

Feed = Mapping[str, np.ndarray]


def layer_boundaries(layers: Sequence[EngineLayer], index: OnnxIndex) -> dict[str, str]:
    """Tensor -> layer: each layer's ONNX outputs consumed outside the layer (graph outputs included),
    in ONNX node order. These are what the compiled model writes to memory anyway."""
    found: dict[str, str] = {}
    for layer in layers:
        nodes = set(layer.onnx_nodes)
        for tensor, node in index.producer.items():
            if (
                node.name in nodes
                and tensor not in found
                and (tensor in index.outputs or index.consumers.get(tensor, set()) - nodes)
            ):
                found[tensor] = layer.name
    rank = {name: i for i, name in enumerate(index.order)}
    return dict(sorted(found.items(), key=lambda kv: rank.get(index.producer[kv[0]].name, 0)))


# ---- streaming statistics --------------------------------------------------------------------------


@dataclass
class StreamingStats:
    """max/mean |err| and reference magnitude of one tensor, accumulated one feed at a time."""

    size: int = 0
    feeds: int = 0
    nonfinite: int = 0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    ref_max_abs: float = 0.0
    shape_mismatch: bool = False

    def update(self, reference: Any, target: Any) -> None:
        r = np.asarray(reference, dtype=np.float64).reshape(-1)
        t = np.asarray(target, dtype=np.float64).reshape(-1)
        self.feeds += 1
        if r.shape != t.shape:
            self.shape_mismatch = True
            return
        finite = np.isfinite(r) & np.isfinite(t)
        err = np.abs(t - r)[finite]
        self.size += r.size
        self.nonfinite += int((~finite).sum())
        self.sum_abs += float(err.sum())
        self.max_abs = max(self.max_abs, float(err.max()) if err.size else 0.0)
        self.ref_max_abs = max(self.ref_max_abs, float(np.abs(r[finite]).max()) if finite.any() else 0.0)

    def result(self) -> dict[str, Any]:
        """Same keys and meaning as `metrics.error_stats` / `normalised_error` for what streams."""
        if self.shape_mismatch:
            return {"shape_mismatch": True, "feeds": self.feeds, "normalised_error": float("inf")}
        finite = self.size - self.nonfinite
        return {
            "shape_mismatch": False,
            "size": self.size,
            "feeds": self.feeds,
            "nonfinite": self.nonfinite,
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / finite if finite else 0.0,
            "ref_max_abs": self.ref_max_abs,
            "normalised_error": self.max_abs / (self.ref_max_abs + 1e-6) if self.size else 0.0,
        }


# ---- compile, run, prove ---------------------------------------------------------------------------


def _runner(compiled: Any, onnx_path: Path, marked: Sequence[str]) -> OpenVinoRunner:
    return OpenVinoRunner(
        lambda: compiled, name="openvino", port_names=onnx_io_names(onnx_path) + list(marked)
    )


def run_compiled(
    compiled: Any, onnx_path: Path, feeds: Iterable[Feed], marked: Sequence[str] = ()
) -> Iterable[dict[str, np.ndarray]]:
    """Outputs per feed, one feed at a time (nothing is held across feeds)."""
    with _runner(compiled, onnx_path, marked) as runner:
        for feed in feeds:
            yield dict(runner.infer(feed))


def _fused(layers: Sequence[EngineLayer]) -> list[EngineLayer]:
    return [layer for layer in layers if layer.onnx_nodes]  # reorders/reshapes the compiler adds have none


@dataclass
class Check:
    """One marked compile against the unmarked one."""

    bit_identical: bool
    max_output_diff: float
    changed_nodes: list[str]
    added_layers: int
    compiled: Any = field(repr=False, default=None)
    strict: bool = True  # also require unchanged fusions and layer precisions, not only equal outputs

    @property
    def clean(self) -> bool:
        return self.bit_identical and (not self.strict or not self.changed_nodes)

    def reason(self) -> str:
        parts = (
            [] if self.bit_identical else [f"final outputs differ (max |diff| {self.max_output_diff:.3g})"]
        )
        if self.changed_nodes:
            parts.append(
                f"fusion/precision changed at {', '.join(self.changed_nodes[:4])}"
                + (f" (+{len(self.changed_nodes) - 4})" if len(self.changed_nodes) > 4 else "")
            )
        return "; ".join(parts)


@dataclass
class Prover:
    """Compiles with a marked set and compares with the unmarked compile on fixed feeds."""

    onnx_path: Path
    settings: OpenVinoSettings
    feeds: Sequence[Feed]
    base_layers: list[EngineLayer]
    base_outputs: list[dict[str, np.ndarray]]
    compiles: int = 0
    strict: bool = True

    def check(self, marked: Sequence[str], keep: bool = False) -> Check:
        self.compiles += 1
        compiled = compile_model(self.onnx_path, self.settings, list(marked))
        layers = runtime_layers(compiled, self.onnx_path)
        diff = diff_engines(_fused(self.base_layers), _fused(layers))
        changed = sorted(
            {n for c in diff.fusion_changes for n in c.onnx_nodes}
            | {n for p in diff.precision_changes for n in p.onnx_nodes}
        )
        worst, same = 0.0, True
        for base, got in zip(
            self.base_outputs, run_compiled(compiled, self.onnx_path, self.feeds, marked), strict=True
        ):
            for name, value in base.items():
                if not np.array_equal(value, got[name]):
                    same = False
                    if value.shape == got[name].shape:
                        delta = np.abs(value.astype(np.float64) - got[name].astype(np.float64))
                        worst = max(worst, float(np.nanmax(delta)) if delta.size else 0.0)
        added = len(layers) - len(_fused(layers)) - (len(self.base_layers) - len(_fused(self.base_layers)))
        return Check(same, worst, changed, added, compiled if keep else None, self.strict)


def find_invasive(
    prover: Prover, marked: list[str], producer_of: Mapping[str, str], max_compiles: int = 60
) -> tuple[dict[str, str], list[str]]:
    """Markings that change the compile, by bisection (a probe marks only its group); markings whose
    producer the fusion diff names are searched first. Returns (tensor -> what it changed, tensors
    left unresolved when the compile budget ran out; callers drop those too)."""
    invasive: dict[str, str] = {}
    unresolved: list[str] = []
    first = prover.check(marked)
    if first.clean:
        return invasive, unresolved
    changed = set(first.changed_nodes)
    suspects = [t for t in marked if producer_of.get(t) in changed]  # searched first: usually the culprits

    def search(group: list[str]) -> None:
        if prover.compiles >= max_compiles:
            unresolved.extend(group)
            return
        result = prover.check(group)
        if result.clean:
            return
        if len(group) == 1:
            invasive[group[0]] = result.reason()
            return
        search(group[: len(group) // 2])
        search(group[len(group) // 2 :])

    for group in (suspects, [t for t in marked if t not in suspects]):
        if group:
            search(group)
    return invasive, unresolved


# ---- the compare -----------------------------------------------------------------------------------


@dataclass
class NonInvasiveOptions:
    """Thresholds and budgets; `threshold` is the normalised error a boundary may have."""

    threshold: float = 1e-2
    worst: int = 10
    max_compiles: int = 60
    chunks: int = 8
    module_map: Mapping[str, str] | None = None
    max_module_error: float = 0.1
    timing_runs: int = 5
    base_recipe: str = "int8_default"
    extra_marks: Sequence[str] = ()  # tensors marked besides the boundaries (tests, suspects)
    # QuantizeLinear outputs are fused into the producing layer as a FakeQuantize; on RT-DETR every one
    # tried was invasive (marking them un-fuses the FQ and changes the outputs), so they are skipped.
    mark_quantized: bool = False
    # True: a marking must leave fusions and layer precisions unchanged too. False: bit-identical final
    # outputs are the proof, and the layers whose output precision or grouping the marking changed are
    # listed (a marked tensor is written in float, so the layer writing it stops emitting u8).
    strict: bool = False


def prove_markings(
    target: Path,
    settings: OpenVinoSettings,
    feeds: Sequence[Feed],
    options: NonInvasiveOptions,
) -> tuple[dict[str, Any], list[str], Check, OnnxIndex, list[EngineLayer]]:
    """Boundaries of the unmarked compile, marked; invasive markings found and dropped; the proof."""
    index = OnnxIndex.of(onnx.load(str(target), load_external_data=False))
    base = compile_model(target, settings)
    base_layers = runtime_layers(base, target)
    base_outputs = list(run_compiled(base, target, feeds))
    control = list(run_compiled(compile_model(target, settings), target, feeds))
    deterministic = all(
        np.array_equal(a[k], b[k]) for a, b in zip(base_outputs, control, strict=True) for k in a
    )
    boundaries = layer_boundaries(base_layers, index)
    known = {n for op in read_model(target).get_ops() for port in op.outputs() for n in port.get_names()}
    candidates = [t for t in boundaries if t not in index.outputs and t in known]
    skipped = [t for t in candidates if index.producer[t].op_type == "QuantizeLinear"]
    if not options.mark_quantized:
        candidates = [t for t in candidates if t not in skipped]
    candidates += [t for t in options.extra_marks if t not in candidates]
    producer_of = {t: index.producer[t].name for t in candidates if t in index.producer}
    prover = Prover(target, settings, feeds, base_layers, base_outputs, strict=options.strict)
    invasive, unresolved = find_invasive(prover, candidates, producer_of, options.max_compiles)
    kept = [t for t in candidates if t not in invasive and t not in unresolved]
    final = prover.check(kept, keep=True)
    fused = _fused(base_layers)
    covered = {boundaries[t] for t in kept if t in boundaries} | {
        boundaries[t] for t in boundaries if t in index.outputs
    }
    proof = {
        "executed_layers": len(base_layers),
        "layers_with_onnx_nodes": len(fused),
        "boundaries_found": len(boundaries),
        "marked": len(kept),
        "graph_outputs": len(index.outputs),
        "layers_covered": len(covered),
        "baseline_deterministic": deterministic,
        "criterion": "outputs and fusions" if options.strict else "bit-identical final outputs",
        "bit_identical": final.bit_identical,
        "max_output_diff": final.max_output_diff,
        "fusions_unchanged": not final.changed_nodes,
        "changed_nodes": final.changed_nodes,
        "layers_added_by_marking": final.added_layers,
        "compiles": prover.compiles,
        "invasive": [
            {"tensor": t, "producer": producer_of.get(t), "changed": why} for t, why in invasive.items()
        ],
        "unresolved_dropped": unresolved,
        "quantized_skipped": 0 if options.mark_quantized else len(skipped),
    }
    return proof, kept, final, index, base_layers
