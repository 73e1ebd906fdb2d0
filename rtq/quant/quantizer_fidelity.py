"""Each exported Q/DQ pair against the torch quantizer it came from.

The torch quantizer applied to the tensor ONNX Runtime fed its QuantizeLinear must give ONNX
Runtime's DequantizeLinear output. This separates "the exported quantizer is different" (scale,
axis, range, rounding) from "the inputs already differed": in an INT8 network a float difference of
one ulp moves a value across a rounding boundary now and then, the flipped value changes the next
layer's inputs by a whole step, and the flips multiply layer after layer (see
`tests/quant/test_quantizer_fidelity.py` for measured counts).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from rtq.backends.onnxruntime import reference_session
from rtq.errors import UserError
from rtq.onnx_graph import mark_outputs
from rtq.quant.onnx_arithmetic import exported_scale, onnx_quantizer_arithmetic

_CALL_SUFFIX = re.compile(r"_\d+$")


def _path_key(tokens: Iterable[str]) -> tuple[str, ...]:
    """Module path tokens with repeats collapsed: the exporter's scopes follow calls, not attributes.

    `query_pos_head` is called inside `decoder.decoder` (scope `/decoder/decoder/query_pos_head`)
    but lives at `decoder.query_pos_head`; a Sequential child gets `/bottlenecks/bottlenecks.0`.
    Collapsing repeated tokens on both sides makes those spellings meet.
    """
    key: list[str] = []
    for token in tokens:
        if not key or key[-1] != token:
            key.append(token)
    return tuple(key)


def _scope_key(node_name: str) -> tuple[str, ...]:
    """`/model/a/b.0/input_quantizer_2/DequantizeLinear` -> ('model', 'a', 'b', '0', 'input_quantizer')."""
    segments = node_name.strip("/").split("/")[:-1]
    if segments:
        segments[-1] = _CALL_SUFFIX.sub("", segments[-1])
    return _path_key(token for segment in segments for token in segment.split("."))


def quantizer_fidelity(
    model: nn.Module, onnx_path: str | Path, feed: Mapping[str, np.ndarray], onnx_arithmetic: bool = False
) -> dict[str, Any]:
    """Each exported Q/DQ pair vs the torch quantizer it came from, on one feed.

    For every DequantizeLinear fed by a QuantizeLinear whose scope names a torch `TensorQuantizer`
    of `model` (the module that was exported: deploy wrapper for the deploy ONNX, network for the
    raw ONNX), ORT's QuantizeLinear input is pushed through the torch quantizer and compared with
    ORT's DequantizeLinear output ("same input" check); the torch quantizer's own input on the same
    feed is compared with ORT's ("end-to-end" inputs). Returns `pairs_compared`, `pairs_unmatched`,
    `same_input_max_abs_steps` (largest difference in quantization steps),
    `same_input_unflipped_max_abs_steps` (the same over elements that agree on the INT8 level),
    `same_input_bin_flips`
    (elements off by at least half a step), `elements`, `end_to_end_bin_flips` (the same count for
    the quantizer outputs of the two end-to-end runs), `first_divergent` (first quantizer, in graph
    order, with an end-to-end bin flip)
    and `per_pair` rows (name, input_max_abs, step, end_to_end_flips, same_input_flips).

    With `onnx_arithmetic` the torch quantizers compute the ONNX Q/DQ formula
    (`rtq.quant.onnx_arithmetic`) instead of modelopt's, so the same-input check must be exact.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    proto = onnx.load(str(onnx_path))
    producers = {out: node for node in proto.graph.node for out in node.output}
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    quantizers = {_path_key(name.split(".")): (name, module) for name, module in model.named_modules()
                  if isinstance(module, TensorQuantizer)}
    pairs: list[tuple[str, int, str, str]] = []  # torch name, call number, Q input, DQ output
    calls: dict[str, int] = {}
    unmatched = 0
    for node in proto.graph.node:
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is None or source.op_type != "QuantizeLinear":
            continue
        match = quantizers.get(_scope_key(node.name))
        if match is None:
            unmatched += 1
            continue
        call = calls.get(match[0], 0)
        calls[match[0]] = call + 1
        pairs.append((match[0], call, source.input[0], node.output[0]))

    if not pairs:
        raise UserError(
            f"no Q/DQ pair of {onnx_path} names a quantizer of {type(model).__name__}: pass the module that "
            "was exported (the deploy wrapper for the deploy ONNX, `RawOutputs` for the raw ONNX)"
        )
    wanted = sorted({t for _, _, q_in, dq_out in pairs for t in (q_in, dq_out) if t not in initializers})
    with tempfile.TemporaryDirectory(prefix="rtq_fidelity_") as work:
        marked = Path(work) / "marked.onnx"
        onnx.save(mark_outputs(proto, wanted, guess=False), str(marked))
        session = reference_session(marked)
        inputs = {i.name: np.asarray(feed[i.name]) for i in session.get_inputs()}
        ort_values = {**initializers, **dict(zip(wanted, session.run(wanted, inputs), strict=True))}

    with onnx_quantizer_arithmetic(model) if onnx_arithmetic else contextlib.nullcontext():
        return _compare_pairs(model, pairs, inputs, ort_values, unmatched)


def _compare_pairs(
    model: nn.Module, pairs: list[tuple[str, int, str, str]], inputs: Mapping[str, np.ndarray],
    ort_values: Mapping[str, np.ndarray], unmatched: int,
) -> dict[str, Any]:
    calls = {name for name, _, _, _ in pairs}
    seen: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda _m, args, out, name=name: seen.setdefault(name, []).append(
            (args[0].detach().cpu().numpy(), out.detach().cpu().numpy())))
        for name in calls]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(**{k: torch.as_tensor(v).to(device) for k, v in inputs.items()})
    finally:
        for handle in handles:
            handle.remove()

    rows: list[dict[str, Any]] = []
    first_divergent: str | None = None
    with torch.no_grad():
        for name, call, q_in, dq_out in pairs:
            quantizer: Any = modules[name]
            step = exported_scale(quantizer).cpu().numpy()  # one INT8 step, per channel when amax is
            ort_in = np.asarray(ort_values[q_in], dtype=np.float32)
            same_input = quantizer(torch.as_tensor(ort_in).to(device)).cpu().numpy()
            same_diff = np.abs(same_input - ort_values[dq_out]) / step
            torch_calls = seen.get(name, [])
            if call < len(torch_calls) and torch_calls[call][0].shape == ort_in.shape:
                in_diff = np.abs(torch_calls[call][0] - ort_in)
                end_flips = int((np.abs(torch_calls[call][1] - ort_values[dq_out]) / step >= 0.5).sum())
            else:  # torch never made this call: everything differs
                in_diff, end_flips = np.full(ort_in.shape, np.inf, dtype=np.float32), int(ort_in.size)
            if first_divergent is None and end_flips:
                first_divergent = name if call == 0 else f"{name} (call {call + 1})"
            rows.append({"name": name if call == 0 else f"{name}#{call + 1}",
                         "input_max_abs": float(in_diff.max(initial=0)), "step": float(step.max()),
                         "end_to_end_flips": end_flips, "same_input_flips": int((same_diff >= 0.5).sum()),
                         "same_input_max_abs_steps": float(same_diff.max(initial=0)),
                         "same_input_unflipped_max_abs_steps": float(
                             same_diff[same_diff < 0.5].max(initial=0)),
                         "elements": int(ort_in.size)})
    return {
        "pairs_compared": len(rows),
        "pairs_unmatched": unmatched,
        "same_input_max_abs_steps": max((r["same_input_max_abs_steps"] for r in rows), default=0.0),
        "same_input_unflipped_max_abs_steps": max(
            (r["same_input_unflipped_max_abs_steps"] for r in rows), default=0.0),
        "same_input_bin_flips": sum(r["same_input_flips"] for r in rows),
        "elements": sum(r["elements"] for r in rows),
        "end_to_end_bin_flips": sum(r["end_to_end_flips"] for r in rows),
        "first_divergent": first_divergent,
        "per_pair": rows,
    }
