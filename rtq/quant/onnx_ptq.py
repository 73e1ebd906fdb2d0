"""Post-training INT8 quantization at the ONNX level: of a detector with no PyTorch source (YOLOX),
or of an exported one when the ONNX-level placement suits the compiler better (RT-DETR on OpenVINO).

modelopt's ONNX PTQ calibrates on ONNX Runtime CPU and inserts QuantizeLinear/DequantizeLinear
pairs on every op it knows an integer kernel for (Conv, MatMul, Gemm, residual Add, pools, ...).
`qdq_summary` says which compute nodes ended up with quantized inputs and which stayed float, so a
recipe's exclusions can be checked in the report.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rtq.errors import UserError

CALIBRATION_METHODS = {"max": "max", "entropy": "entropy"}
# Ops whose arithmetic runs in INT8 once their inputs are quantized; the rest only move data.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class QdqSummary:
    """Which compute nodes read quantized inputs and which stayed in float."""

    quantize_nodes: int
    dequantize_nodes: int
    int8_compute: list[str] = field(default_factory=list)
    float_compute: list[str] = field(default_factory=list)
    int8_by_op: dict[str, int] = field(default_factory=dict)
    float_by_op: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{len(self.int8_compute)} compute nodes INT8, {len(self.float_compute)} float "
            f"({self.float_by_op or 'none'}); {self.quantize_nodes} Q / {self.dequantize_nodes} DQ nodes"
        )


def qdq_summary(model: onnx.ModelProto, compute_ops: Sequence[str] = COMPUTE_OPS) -> QdqSummary:
    """Count Q/DQ nodes and split compute nodes by whether their activation input is dequantized.

    A compute node whose first (activation) input comes from DequantizeLinear runs in INT8 on
    TensorRT and ONNX Runtime; one that reads a float tensor stays in float.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    ops = Counter(node.op_type for node in model.graph.node)
    summary = QdqSummary(quantize_nodes=ops["QuantizeLinear"], dequantize_nodes=ops["DequantizeLinear"])
    int8_ops: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type not in compute_ops:
            continue
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "DequantizeLinear":
            summary.int8_compute.append(node.name)
            int8_ops[node.op_type] += 1
        else:
            summary.float_compute.append(node.name)
            float_ops[node.op_type] += 1
    summary.int8_by_op, summary.float_by_op = dict(int8_ops), dict(float_ops)
    return summary


def _calibration_data(
    calib_feeds: np.ndarray | Iterable[dict[str, np.ndarray]], input_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Calibration arrays per graph input, concatenated over the feeds; an array is the images alone.

    modelopt wants data for every graph input: a detector with a second input (RT-DETR's
    `orig_target_sizes`) gets the values its preprocessing made, never invented ones.
    """
    image_name = input_names[0]
    feeds = [{image_name: calib_feeds}] if isinstance(calib_feeds, np.ndarray) else list(calib_feeds)
    images = np.concatenate([np.asarray(feed[image_name]) for feed in feeds]) if feeds else np.empty(0)
    if images.ndim != 4 or images.shape[0] == 0:
        raise UserError(
            f"calibration data has shape {images.shape}; expected preprocessed images [K,C,H,W] with K >= 1: "
            "point data.calib.source at a folder of images"
        )
    data = {image_name: images.astype(np.float32, copy=False)}
    missing = [name for name in input_names[1:] if not all(name in feed for feed in feeds)]
    if missing:
        raise UserError(
            f"the model also takes input(s) {missing} that the calibration feeds lack: calibrate with feed "
            "dicts from the detector's own preprocessing (rtq.data.calib.calibration_batches)"
        )
    for name in input_names[1:]:
        data[name] = np.concatenate([np.asarray(feed[name]) for feed in feeds])
    return data


def quantize_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    calib_feeds: np.ndarray | Iterable[dict[str, np.ndarray]],
    method: str = "max",
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    log_level: str = "WARNING",
) -> Path:
    """INT8 Q/DQ ONNX of `onnx_path`, calibrated on preprocessed images, written to `out_path`.

    `calib_feeds` is an array [K,C,H,W] as the network sees it (after the detector's own
    preprocessing) or an iterable of feed dicts, which must carry every graph input. Calibration
    runs on ONNX Runtime CPU; the high precision type stays fp32 so the result also runs on CPU.
    Node names in `exclude_nodes` are regular expressions, as modelopt matches them. The file is
    written under a temporary name and renamed, so a failed run leaves no partial model.
    """
    from modelopt.onnx.quantization import quantize

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {method!r} is unknown; use one of {sorted(CALIBRATION_METHODS)}")
    if not onnx_path.is_file():
        raise UserError(f"ONNX model {str(onnx_path)!r} does not exist: export or copy the model first")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    data = _calibration_data(calib_feeds, [i.name for i in graph.input])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtq_ptq_", dir=out_path.parent) as work:
        tmp_out = Path(work) / out_path.name
        quantize(
            onnx_path=str(onnx_path),
            quantize_mode="int8",
            calibration_data=data,
            calibration_method=CALIBRATION_METHODS[method],
            calibration_eps=["cpu"],
            high_precision_dtype="fp32",
            nodes_to_exclude=list(exclude_nodes) or None,
            op_types_to_exclude=list(exclude_op_types) or None,
            output_path=str(tmp_out),
            log_level=log_level,
        )
        if not tmp_out.is_file():
            raise RuntimeError(f"modelopt quantization of {onnx_path} wrote no model")
        with contextlib.suppress(FileNotFoundError):
            out_path.unlink()
        shutil.move(str(tmp_out), out_path)
    return out_path
