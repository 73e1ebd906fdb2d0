"""Does the exported ONNX compute what the torch model computes?

Runs the torch model (FP32 or fake-quant) and the ONNX file in ONNX Runtime with graph
optimizations disabled (so ORT does not fuse Q/DQ into integer kernels) on the same feeds, and
reports how far the outputs are apart, at three depths:

- deploy outputs (`compare_detections`): top-k sorted by score, so near-tied scores can swap
  places; scores are sorted and detections paired one-to-one (same label, nearest box).
- raw outputs (`raw_output_fidelity`): `pred_logits` / `pred_boxes` of every query, rows realigned
  by `enc_topk_index` (query selection is a top-k over encoder scores, so the two backends can pick
  a few different memory positions), plus the detections decoded from them.
- every quantizer (`quantizer_fidelity`): the torch quantizer applied to the tensor ONNX Runtime
  fed its QuantizeLinear must give ONNX Runtime's DequantizeLinear output. This separates
  "the exported quantizer is different" (scale, axis, range, rounding) from "the inputs already
  differed": in an INT8 network a float difference of one ulp moves a value across a rounding
  boundary now and then, the flipped value changes the next layer's inputs by a whole step, and
  the flips multiply layer after layer (see `tests/quant/test_fidelity.py` for measured counts).
"""

from __future__ import annotations

import contextlib
import copy
import logging
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
from rtq.export.onnx_export import export_raw_onnx
from rtq.models.rtdetr import RAW_OUTPUT_NAMES, RawOutputs, decode_raw, last_topk_index, raw_network
from rtq.quant.float64_twin import float64_session
from rtq.quant.onnx_arithmetic import exported_scale, onnx_quantizer_arithmetic

log = logging.getLogger(__name__)

LABEL_MISMATCH_COST = 1e9  # pairs of different labels are only taken when nothing else is left


def _torch_outputs(
    model: nn.Module, feed: Mapping[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model(**{k: torch.as_tensor(v).to(device) for k, v in feed.items()})
    return {name: out.detach().cpu().numpy() for name, out in zip(names, outputs, strict=True)}


def match_detections(
    labels_a: np.ndarray, boxes_a: np.ndarray, labels_b: np.ndarray, boxes_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairing of two detection lists of one image: same label first, then nearest box.

    Greedy over pairs by ascending cost (L-inf box distance, plus a large penalty for different
    labels); with near-identical lists every true pair is far cheaper than any wrong one.
    """
    cost = np.abs(boxes_a[:, None, :] - boxes_b[None, :, :]).max(-1).astype(np.float64)
    cost += LABEL_MISMATCH_COST * (labels_a[:, None] != labels_b[None, :])
    used_a = np.zeros(len(boxes_a), dtype=bool)
    used_b = np.zeros(len(boxes_b), dtype=bool)
    rows: list[int] = []
    cols: list[int] = []
    for flat in np.argsort(cost, axis=None, kind="stable"):
        a, b = divmod(int(flat), len(boxes_b))
        if used_a[a] or used_b[b]:
            continue
        used_a[a] = used_b[b] = True
        rows.append(a)
        cols.append(b)
        if len(rows) == min(len(boxes_a), len(boxes_b)):
            break
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def compare_detections(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Order-robust differences between two batches of deploy outputs (labels, boxes, scores)."""
    raw = {f"{name}_max_abs_positional": float(np.abs(
        reference[name].astype(np.float64) - other[name].astype(np.float64)).max()) for name in reference}
    scores_sorted = float(np.abs(
        np.sort(reference["scores"], axis=1) - np.sort(other["scores"], axis=1)).max())
    box_diff = score_diff = 0.0
    label_mismatches = 0
    for i in range(reference["labels"].shape[0]):
        rows, cols = match_detections(reference["labels"][i], reference["boxes"][i],
                                      other["labels"][i], other["boxes"][i])
        label_mismatches += int((reference["labels"][i][rows] != other["labels"][i][cols]).sum())
        same = reference["labels"][i][rows] == other["labels"][i][cols]
        if same.any():
            box_diff = max(box_diff, float(np.abs(
                reference["boxes"][i][rows[same]] - other["boxes"][i][cols[same]]).max()))
            score_diff = max(score_diff, float(np.abs(
                reference["scores"][i][rows[same]] - other["scores"][i][cols[same]]).max()))
    return {
        **raw,
        "scores_max_abs_sorted": scores_sorted,
        "boxes_max_abs_matched": box_diff,
        "scores_max_abs_matched": score_diff,
        "label_mismatches_matched": float(label_mismatches),
    }


def raw_output_fidelity(
    model: nn.Module,
    onnx_path: str | Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    top_k: int = 300,
    float64: bool = False,
) -> dict[str, float]:
    """Torch vs ORT on raw outputs, queries realigned by `enc_topk_index` (worst case over feeds).

    `model` is the RT-DETR network or its deploy wrapper (FP32 or fake-quant); `onnx_path` is its
    raw export (`export_raw_onnx`). Keys: `pred_logits_max_abs`, `pred_boxes_max_abs` (over the
    queries both backends selected), `pred_logits_mean_abs`, `queries_selected_differently` and
    `queries` (counts), `detections_label_mismatches` (top-k detections decoded from the raw
    outputs, paired order-independently), `detections_scores_max_abs_sorted`,
    `detections_boxes_max_abs_matched` (pixels when feeds carry `orig_target_sizes`), `images`.

    `float64=True` compares a float64 copy of the network, its quantizers computing the ONNX Q/DQ
    formula (`rtq.quant.onnx_arithmetic`), with the float64 twin of the graph
    (`rtq.quant.float64_twin`): float noise no longer flips INT8 levels, so an exact export agrees
    to ~1e-12 and any larger difference is the export's.
    """
    network = raw_network(model)
    network.eval()
    arithmetic: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    dtype: type[np.floating[Any]] = np.float32
    if float64:
        network = copy.deepcopy(network).double()
        session = float64_session(onnx_path)
        arithmetic, dtype = onnx_quantizer_arithmetic(network), np.float64
    else:
        session = reference_session(Path(onnx_path))
    with arithmetic:
        return _raw_fidelity_loop(network, session, feeds, top_k, dtype)


def _raw_fidelity_loop(
    network: nn.Module, session: Any, feeds: Iterable[Mapping[str, np.ndarray]], top_k: int,
    dtype: type[np.floating[Any]],
) -> dict[str, float]:
    device = next(network.parameters()).device
    worst = dict.fromkeys(("pred_logits_max_abs", "pred_boxes_max_abs", "detections_scores_max_abs_sorted",
                           "detections_boxes_max_abs_matched"), 0.0)
    logit_sum = 0.0
    counts = {"queries_selected_differently": 0, "queries": 0, "detections_label_mismatches": 0, "images": 0}
    common_rows = 0
    for feed in feeds:
        images = np.asarray(feed["images"], dtype=dtype)
        with torch.no_grad():
            out = network(torch.as_tensor(images).to(device))
        index = last_topk_index(network)
        ours = (out["pred_logits"].cpu().numpy(), out["pred_boxes"].cpu().numpy(), index.cpu().numpy())
        theirs = session.run(list(RAW_OUTPUT_NAMES), {"images": images})
        sizes = feed.get("orig_target_sizes")
        for i in range(images.shape[0]):
            _, rows_a, rows_b = np.intersect1d(ours[2][i], theirs[2][i], return_indices=True)
            counts["queries"] += int(ours[2].shape[1])
            counts["queries_selected_differently"] += int(ours[2].shape[1] - rows_a.size)
            logit_diff = np.abs(ours[0][i][rows_a] - theirs[0][i][rows_b])
            box_diff = np.abs(ours[1][i][rows_a] - theirs[1][i][rows_b])
            worst["pred_logits_max_abs"] = max(worst["pred_logits_max_abs"], float(logit_diff.max(initial=0)))
            worst["pred_boxes_max_abs"] = max(worst["pred_boxes_max_abs"], float(box_diff.max(initial=0)))
            logit_sum += float(logit_diff.sum())
            common_rows += logit_diff.size
            size = None if sizes is None else np.asarray(sizes)[i]
            detections = compare_detections(decode_raw(ours[0][i], ours[1][i], size, top_k),
                                            decode_raw(theirs[0][i], theirs[1][i], size, top_k))
            counts["detections_label_mismatches"] += int(detections["label_mismatches_matched"])
            worst["detections_scores_max_abs_sorted"] = max(
                worst["detections_scores_max_abs_sorted"], detections["scores_max_abs_sorted"])
            worst["detections_boxes_max_abs_matched"] = max(
                worst["detections_boxes_max_abs_matched"], detections["boxes_max_abs_matched"])
            counts["images"] += 1
    return {**worst, "pred_logits_mean_abs": logit_sum / max(common_rows, 1),
            **{k: float(v) for k, v in counts.items()}}


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
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted)
    with tempfile.TemporaryDirectory(prefix="rtq_fidelity_") as work:
        marked = Path(work) / "marked.onnx"
        onnx.save(proto, str(marked))
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


def torch_vs_onnx(
    model: nn.Module, onnx_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]], float64: bool = True
) -> dict[str, float]:
    """Worst-case differences over all feeds between torch and ORT (no graph optimizations).

    Deploy-output keys as in `compare_detections` (label mismatches summed, the rest worst case)
    plus `images`; for an RT-DETR model also the raw-output keys of `raw_output_fidelity`, prefixed
    `raw_`, measured on a raw export written next to nothing (a temporary directory), and with
    `float64` the same keys of the float64 comparison, prefixed `raw_float64_`.
    """
    feeds = [{k: np.asarray(v) for k, v in feed.items()} for feed in feeds]
    session = reference_session(Path(onnx_path))
    names = [out.name for out in session.get_outputs()]
    model.eval()
    worst: dict[str, float] = {}
    images = 0
    for arrays in feeds:
        reference = _torch_outputs(model, arrays, names)
        onnx_out = dict(zip(names, session.run(names, arrays), strict=True))
        for key, value in compare_detections(reference, onnx_out).items():
            worst[key] = value + worst.get(key, 0.0) if key.startswith("label") else max(
                worst.get(key, 0.0), value)
        images += int(arrays["images"].shape[0])
    worst["images"] = float(images)
    if _is_rtdetr(model):
        with tempfile.TemporaryDirectory(prefix="rtq_raw_") as work:
            size = int(feeds[0]["images"].shape[-1]) if feeds else 640
            raw_model = RawOutputs(raw_network(model))
            raw_path = export_raw_onnx(raw_model, Path(work) / "raw.onnx", image_size=size)
            raw = raw_output_fidelity(model, raw_path, feeds)
            worst.update({f"raw_{key}": value for key, value in raw.items() if key != "images"})
            if float64:
                worst.update(_float64_keys(model, raw_path, feeds))
    return worst


def _float64_keys(
    model: nn.Module, raw_path: Path, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, Any]:
    """`raw_float64_*` keys, or `raw_float64_error` when the graph has no float64 twin (a diagnostic only)."""
    try:
        raw = raw_output_fidelity(model, raw_path, feeds, float64=True)
    except UserError as error:
        log.warning("no float64 fidelity: %s", error)
        return {"raw_float64_error": str(error)}
    return {f"raw_float64_{key}": value for key, value in raw.items() if key != "images"}


def float64_verdict(result: Mapping[str, float], tolerance: float) -> tuple[bool, str] | None:
    """Whether the float64 raw outputs agree within `tolerance`, and a one-line account; None without them."""
    try:
        logits, boxes = result["raw_float64_pred_logits_max_abs"], result["raw_float64_pred_boxes_max_abs"]
    except KeyError:
        return None
    return max(logits, boxes) <= tolerance, (
        f"fidelity, raw outputs in float64: logits {logits:.2g}, boxes {boxes:.2g} "
        f"(tolerance {tolerance:g}); "
        f"float32 as deployed: logits {result.get('raw_pred_logits_max_abs', float('nan')):.2g}, "
        f"{result.get('raw_queries_selected_differently', 0):.0f}/{result.get('raw_queries', 0):.0f} queries "
        "selected differently (INT8 levels flipped by float noise)"
    )


def _is_rtdetr(model: nn.Module) -> bool:
    try:
        raw_network(model)
    except Exception:  # noqa: BLE001 - any model without raw outputs simply gets no raw keys
        return False
    return True
