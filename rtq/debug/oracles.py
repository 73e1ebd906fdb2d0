"""Oracles for the fusion-bug localiser: "how wrong is the model if these tensors are marked?".

An oracle builds the candidate graph with some tensors marked as extra outputs, runs it and returns
the error of the original outputs against a clean reference. The localiser only counts builds and
compares errors with a threshold, so a real TensorRT engine and a CPU simulator are interchangeable.

`FaultInjectionOracle` is a SIMULATOR: it does not reproduce TensorRT, it plants a known fusion
fault in ONNX Runtime so the search can be tested (and demonstrated) on a machine without a GPU.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rtq.compare.metrics import Metric, output_error
from rtq.debug.structure import FusionCluster
from rtq.errors import UserError
from rtq.onnx_graph import mark_outputs, tensor_types

FaultKind = Literal["wrong_scale", "fp16", "bf16"]


@runtime_checkable
class Oracle(Protocol):
    """Error of the final outputs when the graph is built with `marked_tensors` as extra outputs."""

    builds: int

    def evaluate(self, marked_tensors: frozenset[str]) -> float:
        """Build (engine or simulated graph) with those outputs marked, run, return the error."""
        ...


def _session(model: onnx.ModelProto) -> object:
    """ORT session with graph optimisations off: Q/DQ stay exact fake-quant, marking changes nothing."""
    from rtq.backends.onnxruntime import reference_session

    return reference_session(model.SerializeToString(), quiet=True)


def run_model(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Run `model` on CPU and return the named outputs (default: the original graph outputs)."""
    names = outputs or [o.name for o in model.graph.output]
    session = _session(model)
    values = session.run(names, dict(feeds))  # type: ignore[attr-defined]
    return dict(zip(names, values, strict=True))


@dataclass
class PlantedFault:
    """One simulated faulty fusion: the cluster and the scale its outputs are wrongly re-quantized to."""

    cluster: FusionCluster
    scales: dict[str, float]  # cluster output tensor -> wrong per-tensor scale


class FaultInjectionOracle:
    """SIMULATED fusion bug in ONNX Runtime (no TensorRT involved).

    Each cluster in `faulty` stands for a set of projections that a (hypothetical) faulty fusion
    merges. Unless one of the cluster's tensors is marked as an output (which, as in TensorRT,
    stops the fusion), its outputs are corrupted by graph rewriting:
      - "wrong_scale": re-quantized to int8 with `wrong_scale_factor` times the scale that fits
        their calibrated range, so most values saturate (default),
      - "fp16" / "bf16": rounded to reduced precision (a milder fault).
    The error is `rtq.compare.metrics.output_error` of the original outputs against the clean graph.
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | Path,
        feeds: Mapping[str, np.ndarray],
        faulty: list[FusionCluster],
        fault: FaultKind = "wrong_scale",
        wrong_scale_factor: float = 0.05,
    ) -> None:
        if not faulty:
            raise UserError("FaultInjectionOracle got no fault clusters: pass --fault-layers that exist")
        if fault not in ("wrong_scale", "fp16", "bf16"):
            raise UserError(f"unknown fault kind {fault!r}: use wrong_scale, fp16 or bf16")
        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self.feeds = dict(feeds)
        self.fault = fault
        self.builds = 0
        self.types = tensor_types(self.model)
        self.error: Metric = output_error()
        self.reference = run_model(self.model, self.feeds)
        cluster_outputs = [t for c in faulty for t in c.outputs]
        ranges = run_model(
            mark_outputs(self.model, cluster_outputs, self.types), self.feeds, cluster_outputs
        )
        self.planted = [
            PlantedFault(
                cluster,
                {
                    t: max(float(np.abs(ranges[t]).max()), 1e-6) / 127.0 * wrong_scale_factor
                    for t in cluster.outputs
                },
            )
            for cluster in faulty
        ]

    def faulty_graph(self, marked_tensors: frozenset[str]) -> onnx.ModelProto:
        """The graph as the simulated builder would compile it with `marked_tensors` marked."""
        model = mark_outputs(self.model, sorted(marked_tensors), self.types)
        for planted in self.planted:
            if marked_tensors & set(planted.cluster.tensors):
                continue  # a marked tensor inside the cluster prevents the faulty fusion
            for tensor, scale in planted.scales.items():
                _corrupt_tensor(model, tensor, self.fault, scale)
        return model

    def evaluate(self, marked_tensors: frozenset[str]) -> float:
        """Build the simulated graph, run it in ORT, return the error of the original outputs."""
        self.builds += 1
        model = self.faulty_graph(marked_tensors)
        got = run_model(model, self.feeds, list(self.reference))
        return self.error([self.reference], [got])


def _corrupt_tensor(model: onnx.ModelProto, tensor: str, fault: FaultKind, scale: float) -> None:
    """Insert fault ops right after `tensor`'s producer and point its consumers at the faulty copy."""
    graph = model.graph
    faulty = f"{tensor}__simulated_fault"
    prefix = f"{tensor}__fault"
    if fault == "wrong_scale":
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{prefix}_scale"),
                numpy_helper.from_array(np.array(0, dtype=np.int8), f"{prefix}_zero_point"),
            ]
        )
        new_nodes = [
            helper.make_node(
                "QuantizeLinear",
                [tensor, f"{prefix}_scale", f"{prefix}_zero_point"],
                [f"{prefix}_q"],
                name=f"{prefix}_QuantizeLinear",
            ),
            helper.make_node(
                "DequantizeLinear",
                [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero_point"],
                [faulty],
                name=f"{prefix}_DequantizeLinear",
            ),
        ]
    else:
        low = TensorProto.FLOAT16 if fault == "fp16" else TensorProto.BFLOAT16
        new_nodes = [
            helper.make_node("Cast", [tensor], [f"{prefix}_low"], to=low, name=f"{prefix}_CastDown"),
            helper.make_node(
                "Cast", [f"{prefix}_low"], [faulty], to=TensorProto.FLOAT, name=f"{prefix}_CastUp"
            ),
        ]
    position = 0
    for i, node in enumerate(graph.node):
        if tensor in node.output:
            position = i + 1
        for j, name in enumerate(node.input):
            if name == tensor:
                node.input[j] = faulty
    for offset, node in enumerate(new_nodes):
        graph.node.insert(position + offset, node)


class TensorRTOracle:
    """Real oracle: build a TensorRT engine with the marked outputs and compare with a reference.

    Each distinct marking costs one engine build; engines and layer descriptions are kept in
    `work_dir` so the localiser can diff fusions before and after the fix.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        feeds: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray] | None = None,
        work_dir: str | Path | None = None,
        build_config: Any = None,
    ) -> None:
        from rtq.backends.tensorrt.compat import import_tensorrt

        import_tensorrt()  # StageSkipped("TensorRT not installed") when absent
        self.onnx_path = Path(onnx_path)
        self.model = onnx.load(str(self.onnx_path))
        self.types = tensor_types(self.model)
        self.error: Metric = output_error()
        self.feeds = dict(feeds)
        self.reference = dict(reference) if reference is not None else run_model(self.model, self.feeds)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="rtq_localize_"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = build_config if build_config is not None else _default_build_config()
        self.build_config = config.with_feed_profiles(self.feeds)
        self.builds = 0
        self.engines: dict[frozenset[str], Path] = {}

    def evaluate(self, marked_tensors: frozenset[str]) -> float:
        """Mark, build the engine, run it on the feeds, return the error of the original outputs."""
        from rtq.backends.tensorrt.build import build_engine
        from rtq.backends.tensorrt.runner import make_trt_runner

        self.builds += 1
        candidate = self.work_dir / f"candidate_{self.builds:03d}.onnx"
        onnx.save(mark_outputs(self.model, sorted(marked_tensors), self.types), str(candidate))
        engine = build_engine(
            candidate, self.work_dir / f"candidate_{self.builds:03d}.plan", self.build_config
        )
        self.engines[marked_tensors] = Path(engine)
        with make_trt_runner(engine) as runner:
            got = runner.infer(self.feeds)
        return self.error([self.reference], [{k: got[k] for k in self.reference}])

    def fusion_diff(self, before: frozenset[str], after: frozenset[str]) -> list[str]:
        """ONNX node groups that TensorRT fused differently once `after` is marked (engine inspector)."""
        from rtq.backends.layers import diff_engines
        from rtq.backends.tensorrt.build import layers_json_path
        from rtq.backends.tensorrt.inspect import load_layers

        if before not in self.engines or after not in self.engines:
            return []
        layers = [load_layers(layers_json_path(self.engines[key])) for key in (before, after)]
        diff = diff_engines(layers[0], layers[1], "unmarked", "marked")
        return [
            f"{', '.join(c.onnx_nodes[:4])}{' ...' if len(c.onnx_nodes) > 4 else ''}: "
            f"{len(c.layers_a)} layer(s) -> {len(c.layers_b)} layer(s)"
            for c in diff.fusion_changes
        ]


def _default_build_config() -> Any:
    """INT8 build settings of the backend's defaults (Q/DQ graphs carry their own scales)."""
    from rtq.backends.tensorrt.build import EngineBuildConfig

    return EngineBuildConfig()
