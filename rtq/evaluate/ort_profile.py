"""What ONNX Runtime actually runs: its optimized graph, counted by kind of op.

A Q/DQ ONNX is only faster on ONNX Runtime CPU when ORT's QDQ transformers fuse each
DequantizeLinear -> Conv/MatMul -> QuantizeLinear group into an integer kernel (QLinearConv,
QLinearMatMul, MatMulInteger, ConvInteger). A group ORT does not recognise stays as float
Conv/MatMul between explicit Q and DQ nodes: the same float work plus the (de)quantization, so
slower than FP32. Counting the op types of the graph ORT saves (`optimized_model_filepath`) and
listing the DQ/Q nodes left over says which case a model is in and where.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from rtq.errors import UserError

INTEGER_OPS = (
    "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeMatMul",
)
FLOAT_CONV_OPS = ("Conv", "FusedConv")
FLOAT_MATMUL_OPS = ("MatMul", "FusedMatMul", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SUMMARY_COLUMNS = (
    ("QLinearConv", "QLinearConv"),
    ("QLinearMatMul", "QLinearMatMul"),
    ("MatMulIntegerToFloat", "MatMulIntegerToFloat"),
    ("MatMulInteger", "MatMulInteger"),
    ("ConvInteger", "ConvInteger"),
    ("other QLinear*", "other_qlinear"),
    ("float Conv", "float_conv"),
    ("float MatMul/Gemm", "float_matmul"),
    ("Q left", "QuantizeLinear"),
    ("DQ left", "DequantizeLinear"),
)


@dataclass
class OrtGraphProfile:
    """Op counts of ORT's optimized graph and the Q/DQ nodes it left unfused, by neighbour."""

    source: str
    op_counts: dict[str, int]
    # "DQ feeding Conv" / "Q fed by Relu": which op consumes a leftover DQ / produces a leftover Q.
    unfused_dq: dict[str, int] = field(default_factory=dict)
    unfused_q: dict[str, int] = field(default_factory=dict)
    # Float Conv/MatMul nodes that read a DQ output (quantized but not fused), by the op after them:
    # the missing QuantizeLinear after the compute op is the usual reason a fusion did not match.
    quantized_float_compute: dict[str, int] = field(default_factory=dict)
    # A few node names per unfused kind, to find them in Netron.
    examples: dict[str, list[str]] = field(default_factory=dict)

    def count(self, key: str) -> int:
        """One summary figure: an op type, or `float_conv` / `float_matmul` for the float compute ops."""
        if key == "float_conv":
            return sum(self.op_counts.get(op, 0) for op in FLOAT_CONV_OPS)
        if key == "float_matmul":
            return sum(self.op_counts.get(op, 0) for op in FLOAT_MATMUL_OPS)
        if key == "other_qlinear":
            return sum(
                n for op, n in self.op_counts.items() if op.startswith("QLinear") and op not in INTEGER_OPS
            )
        return self.op_counts.get(key, 0)

    @property
    def integer_compute(self) -> int:
        return sum(self.op_counts.get(op, 0) for op in INTEGER_OPS)

    def line(self) -> str:
        parts = [f"{self.count(key)} {label}" for label, key in SUMMARY_COLUMNS if self.count(key)]
        return ", ".join(parts) or "no compute ops"


def _op_name(node: onnx.NodeProto) -> str:
    """Op type without the domain: NCHWc Conv (`com.microsoft.nchwc`) counts as Conv."""
    return node.op_type


def profile_graph(model: onnx.ModelProto, source: str = "", max_examples: int = 3) -> OrtGraphProfile:
    """Count op types and describe every QuantizeLinear / DequantizeLinear still in `model`."""
    nodes = list(model.graph.node)
    producers = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {out.name for out in model.graph.output}
    profile = OrtGraphProfile(source=source, op_counts=dict(Counter(_op_name(n) for n in nodes)))
    dq_kinds: Counter[str] = Counter()
    q_kinds: Counter[str] = Counter()
    for node in nodes:
        if node.op_type == "DequantizeLinear":
            users = consumers.get(node.output[0], [])
            names = sorted({_op_name(u) for u in users}) or (
                ["graph output"] if node.output[0] in graph_outputs else ["nothing"]
            )
            kind = f"DQ feeding {'/'.join(names)}"
            dq_kinds[kind] += 1
        elif node.op_type == "QuantizeLinear":
            src = producers.get(node.input[0])
            origin = _op_name(src) if src is not None else "graph input / initializer"
            kind = f"Q fed by {origin}"
            q_kinds[kind] += 1
        else:
            continue
        examples = profile.examples.setdefault(kind, [])
        if len(examples) < max_examples:
            examples.append(node.name or node.output[0])
    compute: Counter[str] = Counter()
    for node in nodes:
        if node.op_type not in FLOAT_CONV_OPS + FLOAT_MATMUL_OPS:
            continue
        src = producers.get(node.input[0]) if node.input else None
        if src is None or src.op_type != "DequantizeLinear":
            continue
        after = sorted({_op_name(u) for u in consumers.get(node.output[0], [])}) or ["graph output"]
        compute[f"{_op_name(node)} -> {'/'.join(after)}"] += 1
    profile.quantized_float_compute = dict(compute.most_common())
    profile.unfused_dq = dict(dq_kinds.most_common())
    profile.unfused_q = dict(q_kinds.most_common())
    return profile


def save_optimized_graph(
    onnx_path: str | Path,
    optimized_path: str | Path,
    intra_op_threads: int | None = None,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> Path:
    """Open `onnx_path` in a CPU session at `level` and save the graph ORT runs to `optimized_path`.

    ENABLE_ALL includes the CPU layout transforms (NCHWc), so the saved graph is specific to this
    CPU; it is for reading, not for shipping.
    """
    source = Path(onnx_path)
    if not source.is_file():
        raise UserError(f"ONNX model {source} does not exist; export it first or fix the path")
    target = Path(optimized_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = os.fspath(target)
    options.log_severity_level = 3  # the "hardware specific optimizations" warning is expected here
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    ort.InferenceSession(os.fspath(source), sess_options=options, providers=["CPUExecutionProvider"])
    return target


def profile_onnxrt(
    onnx_path: str | Path, work_dir: str | Path, intra_op_threads: int | None = None
) -> OrtGraphProfile:
    """Save ORT's optimized graph of `onnx_path` under `work_dir` and profile it."""
    path = Path(onnx_path)
    target = Path(work_dir) / f"{path.stem}.ort_optimized.onnx"
    optimized = save_optimized_graph(path, target, intra_op_threads)
    return profile_graph(onnx.load(os.fspath(optimized), load_external_data=False), source=path.name)


def profiles_markdown(profiles: Mapping[str, OrtGraphProfile]) -> str:
    """One row per model: integer kernels, float compute and leftover Q/DQ in ORT's optimized graph."""
    header = "| model | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |"
    lines = [header, "| --- |" + " ---: |" * len(SUMMARY_COLUMNS)]
    for name, profile in profiles.items():
        cells = " | ".join(str(profile.count(key)) for _, key in SUMMARY_COLUMNS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def unfused_markdown(profile: OrtGraphProfile, limit: int = 12) -> str:
    """The Q/DQ nodes ORT left in the graph, grouped by the op next to them, most frequent first."""
    rows = list(profile.unfused_dq.items()) + list(profile.unfused_q.items())
    if not rows:
        return "ORT fused every Q/DQ node of this model.\n"
    prefix = ""
    if profile.quantized_float_compute:
        shown = ", ".join(f"{kind} ({count})" for kind, count in profile.quantized_float_compute.items())
        prefix = f"Float compute ops that read a DequantizeLinear output, by the op after them: {shown}.\n\n"
    rows.sort(key=lambda item: -item[1])
    lines = ["| leftover node and its neighbour | count | e.g. |", "| --- | ---: | --- |"]
    for kind, count in rows[:limit]:
        examples = ", ".join(f"`{name}`" for name in profile.examples.get(kind, []))
        lines.append(f"| {kind} | {count} | {examples} |")
    if len(rows) > limit:
        lines.append(f"| ({len(rows) - limit} more kinds) | {sum(c for _, c in rows[limit:])} | |")
    return prefix + "\n".join(lines) + "\n"
