"""Torch modules (or ONNX-order chunks) of ONNX nodes, per-module latency and error, exclusion recipe.

torch.onnx names nodes after the module path (`/model/backbone/res_layers.0/blocks.1/...`), so a
node's module is a name prefix; ONNX files with flat names (YOLOX `Conv_41`) are split into equal
chunks of compute nodes in ONNX order, or follow a user mapping (regex -> module). Per module: the
INT8 compile's time (sum of its layers' `time_us`) against the FP32 compile's, and the error of the
tensors leaving the module; modules over an error threshold become a recipe that keeps them float.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from rtq.backends.layers import EngineLayer
from rtq.backends.openvino.compile import OpenVinoSettings, compile_model, onnx_io_names
from rtq.backends.openvino.inspect import NON_COMPUTE_OPS, onnx_op_types, runtime_layers
from rtq.backends.openvino.runner import OpenVinoRunner

_INDEXED = re.compile(r"\.\d+$")
_PASS_THROUGH = ("QuantizeLinear", "DequantizeLinear", "Identity")


@dataclass
class OnnxIndex:
    """Who produces and who consumes each tensor of an ONNX graph, and the graph's node order."""

    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, set[str]]
    order: list[str]
    outputs: list[str]
    initializers: dict[str, np.ndarray]
    nodes: dict[str, onnx.NodeProto]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> OnnxIndex:
        producer: dict[str, onnx.NodeProto] = {}
        consumers: dict[str, set[str]] = defaultdict(set)
        for node in model.graph.node:
            producer.update({out: node for out in node.output if out})
            for name in node.input:
                consumers[name].add(node.name)
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                inits[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        return cls(
            producer,
            dict(consumers),
            [n.name for n in model.graph.node],
            [o.name for o in model.graph.output],
            inits,
            {n.name: n for n in model.graph.node},
        )

    def is_compute(self, node_name: str, op_types: Mapping[str, str]) -> bool:
        return op_types.get(node_name, "") not in NON_COMPUTE_OPS


def module_of_node(name: str, depth: int = 3) -> str | None:
    """Torch-export module of a node: the path up to the first indexed part (`res_layers.0`,
    `layers.3`) or head, else the first `depth` parts; None for flat names (`Conv_41`)."""
    parts = name.strip("/").split("/")[:-1]
    if not name.startswith("/"):
        return None
    for i, part in enumerate(parts):
        if _INDEXED.search(part) or "head" in part:
            return "/" + "/".join(parts[: i + 1])
    return "/" + "/".join(parts[:depth]) if parts else "/"


def node_modules(
    index: OnnxIndex,
    op_types: Mapping[str, str],
    chunks: int = 8,
    module_map: Mapping[str, str] | None = None,
    depth: int = 3,
) -> tuple[dict[str, str], str]:
    """Node -> module for every node, and how the modules were formed (said in the report)."""
    if module_map:
        rules = [(re.compile(rx), module) for rx, module in module_map.items()]
        return (
            {n: next((m for rx, m in rules if rx.search(n)), "other") for n in index.order},
            f"user mapping ({len(rules)} rules)",
        )
    if sum(n.startswith("/") for n in index.order) > len(index.order) / 2:
        return (
            {n: module_of_node(n, depth) or "/" for n in index.order},
            f"torch-export name prefixes (first indexed part or head, else depth {depth})",
        )
    compute = [n for n in index.order if index.is_compute(n, op_types)]
    size = max(1, -(-len(compute) // max(1, chunks)))
    mapping: dict[str, str] = {}
    for k in range(0, len(compute), size):
        part = compute[k : k + size]
        mapping.update({n: f"chunk{k // size:02d} {part[0]}..{part[-1]}" for n in part})
    last = "chunk00"
    for n in index.order:  # Q/DQ and constants join the chunk of the compute node before them
        last = mapping.setdefault(n, last)
    return mapping, f"flat node names: {chunks} equal chunks of compute nodes in ONNX order"


def source_tensor(index: OnnxIndex, tensor: str) -> str:
    """The float tensor a Q/DQ chain quantizes (itself when it is not a Q/DQ output)."""
    while tensor in index.producer and index.producer[tensor].op_type in _PASS_THROUGH:
        tensor = index.producer[tensor].input[0]
    return tensor


def dequantizer(index: OnnxIndex, tensor: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """Codes -> float for a per-tensor QuantizeLinear output (identity for float tensors)."""
    node = index.producer.get(tensor)
    if node is None or node.op_type != "QuantizeLinear":
        return lambda x: x
    scale = index.initializers.get(node.input[1])
    zero = index.initializers.get(node.input[2]) if len(node.input) > 2 else np.zeros(())
    if scale is None or zero is None or scale.size != 1:
        return None
    return lambda x: (x.astype(np.float64) - float(zero)) * float(scale)


def _downstream_modules(index: OnnxIndex, tensor: str, modules: Mapping[str, str]) -> set[str]:
    """Modules of the compute nodes reading `tensor`, looking through Q/DQ nodes."""
    found: set[str] = set()
    stack, seen = [tensor], {tensor}
    while stack:
        for name in index.consumers.get(stack.pop(), set()):
            node = index.nodes[name]
            if node.op_type in _PASS_THROUGH:
                stack.extend(o for o in node.output if o not in seen)
                seen.update(node.output)
            else:
                found.add(modules.get(name, "?"))
    return found


def boundary_module(index: OnnxIndex, tensor: str, modules: Mapping[str, str]) -> tuple[str, bool]:
    """(module producing a boundary tensor, whether the tensor leaves that module)."""
    source = source_tensor(index, tensor)
    node = index.producer.get(source) or index.producer[tensor]
    module = modules.get(node.name, "?")
    leaves = tensor in index.outputs or bool(_downstream_modules(index, tensor, modules) - {module})
    return module, leaves


def layer_module(layer: EngineLayer, modules: Mapping[str, str], op_types: Mapping[str, str]) -> str:
    """A layer belongs to the module of its first compute node (else its first node)."""
    nodes = [n for n in layer.onnx_nodes if op_types.get(n, "") not in NON_COMPUTE_OPS] or list(
        layer.onnx_nodes
    )
    return next((modules[n] for n in nodes if n in modules), "(no ONNX node)")


def module_latency(
    onnx_path: Path,
    settings: OpenVinoSettings,
    feeds: Sequence[Mapping[str, np.ndarray]],
    modules: Mapping[str, str],
    runs: int = 5,
) -> dict[str, float]:
    """Mean microseconds per inference each module's layers take (PERF_COUNT on, unmarked compile)."""
    compiled = compile_model(onnx_path, replace(settings, profile=True))
    op_types = onnx_op_types(onnx_path)
    spent: dict[str, float] = defaultdict(float)
    runner = OpenVinoRunner(lambda: compiled, name="openvino-profile", port_names=onnx_io_names(onnx_path))
    with runner:
        runner.infer(feeds[0])  # warm-up: first-run allocations are not the model's cost
        for k in range(runs):
            runner.infer(feeds[k % len(feeds)])
            for layer in runtime_layers(compiled, onnx_path):
                spent[layer_module(layer, modules, op_types)] += (layer.time_us or 0.0) / runs
    return dict(spent)


def module_table(
    boundary_stats: Mapping[str, Mapping[str, Any]],
    index: OnnxIndex,
    modules: Mapping[str, str],
    int8_us: Mapping[str, float],
    fp32_us: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One row per module in ONNX order: latency INT8 vs FP32, worst error of the tensors leaving it."""
    rows: dict[str, dict[str, Any]] = {}
    for name in index.order:
        rows.setdefault(
            modules.get(name, "?"),
            {"module": modules.get(name, "?"), "outputs": [], "error": None, "worst_output": None},
        )
    for tensor, stats in boundary_stats.items():
        module, leaves = boundary_module(index, tensor, modules)
        if not leaves or module not in rows:
            continue
        row = rows[module]
        row["outputs"].append(tensor)
        if row["error"] is None or stats["normalised_error"] > row["error"]:
            row["error"], row["worst_output"] = stats["normalised_error"], tensor
    for module, row in rows.items():
        row["int8_us"] = int8_us.get(module)
        row["fp32_us"] = fp32_us.get(module)
        row["speedup"] = (row["fp32_us"] / row["int8_us"]) if row["int8_us"] and row["fp32_us"] else None
    return [r for r in rows.values() if r["outputs"] or r["int8_us"] or r["fp32_us"]]


def torch_glob(module: str) -> str:
    """`/model/decoder/decoder/layers.5` -> `*decoder.decoder.layers.5` (a modelopt module glob)."""
    return "*" + module.strip("/").removeprefix("model/").replace("/", ".")


def exclusion_recipe(
    rows: Iterable[Mapping[str, Any]],
    max_error: float,
    torch_names: bool,
    name: str,
    modules: Mapping[str, str],
    op_types: Mapping[str, str],
    base_recipe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Modules whose error exceeds `max_error` kept float: a torch recipe (`exclude` globs) when the
    names are torch-export paths, else an ONNX PTQ recipe (`level: onnx`, `exclude_nodes`)."""
    from rtq.debug.auto_recipe import onnx_recipe_dict, recipe_dict

    bad = [r["module"] for r in rows if r["error"] is not None and r["error"] > max_error]
    why = f"modules whose INT8 output error exceeds {max_error:g} (rtq.compare.noninvasive)"
    if torch_names:
        # graph-level nodes (`/TopK`, module "/") have no torch module to keep float: never glob "*"
        globs = [torch_glob(m) for m in bad if m.strip("/") not in ("", "model")]
        return recipe_dict(name, globs, why, dict(base_recipe or {}) or None)
    nodes = [
        f"{re.escape(n)}$" for n, m in modules.items() if m in bad and op_types.get(n) not in NON_COMPUTE_OPS
    ]
    return onnx_recipe_dict(name, nodes, why)


def load_module_map(path: str | Path | None) -> dict[str, str] | None:
    """A user mapping file (YAML/JSON mapping of node-name regex -> module name)."""
    if path is None:
        return None
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        from rtq.errors import UserError

        raise UserError(f"--module-map {path} must hold a mapping of node-name regex -> module name")
    return {str(k): str(v) for k, v in raw.items()}
