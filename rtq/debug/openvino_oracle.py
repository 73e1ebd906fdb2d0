"""Localiser oracle on a real INT8 compiler: OpenVINO compiles the graph with the marked tensors.

Each `evaluate` is one real compile (marking a tensor as an output forces it into memory, which
breaks any fusion across it, the mechanism of the founding TensorRT bug) and one run on the feeds;
the error is the compare metric of the original outputs against ONNX Runtime's reference run of
the unmarked graph. The candidates come from the compiled model itself: the tensors inside its
fused layers (outputs of a fused layer's compute nodes other than its last), so the search only
tries markings that can change what the compiler fused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from rtq.backends.layers import EngineLayer, diff_engines
from rtq.compare.metrics import Metric, output_error
from rtq.debug.oracles import run_model
from rtq.debug.structure import Candidate


class OpenVinoOracle:
    """Error of the original outputs when OpenVINO compiles the graph with `marked_tensors` marked."""

    def __init__(
        self,
        onnx_path: str | Path,
        feeds: Mapping[str, np.ndarray],
        settings: object | None = None,
        reference: Mapping[str, np.ndarray] | None = None,
        metric: Metric | None = None,
    ) -> None:
        from rtq.backends.openvino.compile import OpenVinoSettings

        self.onnx_path = Path(onnx_path)
        self.model = onnx.load(str(self.onnx_path))
        self.settings = settings if isinstance(settings, OpenVinoSettings) else OpenVinoSettings()
        self.feeds = dict(feeds)
        self.reference = dict(reference) if reference is not None else run_model(self.model, self.feeds)
        self.error: Metric = metric or output_error()
        self.builds = 0
        self.layers: dict[frozenset[str], list[EngineLayer]] = {}

    def compile(self, marked_tensors: frozenset[str]) -> object:
        from rtq.backends.openvino.compile import compile_model
        from rtq.backends.openvino.inspect import runtime_layers

        self.builds += 1
        compiled = compile_model(self.onnx_path, self.settings, sorted(marked_tensors) or None)
        self.layers[marked_tensors] = runtime_layers(compiled, self.model)
        return compiled

    def evaluate(self, marked_tensors: frozenset[str]) -> float:
        """Compile with the marking, run on the feeds, return the error of the original outputs."""
        from rtq.backends.openvino.runner import OpenVinoRunner

        compiled = self.compile(marked_tensors)
        with OpenVinoRunner(lambda: compiled, port_names=[*self.feeds, *self.reference]) as runner:
            out = runner.infer(self.feeds)
        return self.error([self.reference], [{name: out[name] for name in self.reference}])

    def candidates(self, include: str | None = None) -> list[Candidate]:
        """Tensors inside the fused layers of the unmarked compile (compiles it if needed)."""
        if frozenset() not in self.layers:
            self.compile(frozenset())
        pattern = re.compile(include) if include else None
        return fusion_candidates(self.model, self.layers[frozenset()], pattern)

    def fusion_diff(self, before: frozenset[str], after: frozenset[str]) -> list[str]:
        """Layers OpenVINO fused differently once `after` is marked (runtime models of both compiles)."""
        if before not in self.layers or after not in self.layers:
            return []
        diff = diff_engines(
            self.layers[before], self.layers[after], "unmarked", "marked", ignore_unmapped=True
        )
        return [
            f"{', '.join(c.onnx_nodes[:4])}{' ...' if len(c.onnx_nodes) > 4 else ''}: "
            f"{len(c.layers_a)} layer(s) -> {len(c.layers_b)} layer(s)"
            for c in diff.fusion_changes
        ]


def fusion_candidates(
    model: onnx.ModelProto, layers: Sequence[EngineLayer], pattern: re.Pattern[str] | None = None
) -> list[Candidate]:
    """Tensors whose marking changes what the compiler merged: per fused layer the outputs of its
    compute nodes but the last (marking one splits the layer), and the input of every QuantizeLinear
    the compiler executes away from that input's producer (OpenVINO moves FakeQuantize across Concat
    and other data movement; marking the input keeps the quantizer where the graph put it)."""
    from rtq.backends.openvino.inspect import compute_nodes

    op_types = {node.name: node.op_type for node in model.graph.node}
    nodes_by_name = {node.name: node for node in model.graph.node}
    writer = {tensor: node.name for node in model.graph.node for tensor in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    order = {node.name: i for i, node in enumerate(model.graph.node)}
    found: list[Candidate] = []
    seen: set[str] = set()

    def add(tensor: str, node: str, kind: str) -> None:
        keep = pattern is None or bool(pattern.search(tensor) or pattern.search(node))
        if tensor not in seen and tensor not in graph_outputs and tensor in writer and keep:
            seen.add(tensor)
            found.append(Candidate(tensor, node, kind))

    for layer in layers:
        nodes = sorted(compute_nodes(layer, op_types), key=lambda n: order.get(n, -1))
        for node in nodes[:-1]:
            for tensor in nodes_by_name[node].output[:1] if node in nodes_by_name else []:
                add(tensor, node, f"inside {layer.type}")
        for node in layer.onnx_nodes:
            if op_types.get(node) != "QuantizeLinear" or not layer.name.startswith(f"{node}_"):
                continue  # only quantizers the compiler cloned and moved
            source = nodes_by_name[node].input[0]
            if writer.get(source) is not None and writer[source] not in layer.onnx_nodes:
                add(source, writer[source], f"quantizer moved into {layer.type}")
    return sorted(found, key=lambda c: order.get(c.node, -1))
