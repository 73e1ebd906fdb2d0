"""Structure of the CPU benchmark and of ORT graph inspection (never its speed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.bench import (
    ANALYSIS_HEADING,
    BenchSettings,
    Timing,
    cpu_description,
    interleaved_timing,
    ort_quantize_static,
    parse_args,
    preserved_analysis,
    render_report,
    score_fidelity,
    timing_markdown,
)
from rtq.errors import UserError
from rtq.evaluate.ort_profile import profile_graph, profile_onnxrt, profiles_markdown, unfused_markdown


def _conv_model(path: Path) -> Path:
    """Conv -> Relu -> Conv on [N,4,8,8] with a symbolic batch: enough for ORT's QDQ fusions."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _feeds(count: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.random((batch, 4, 8, 8), dtype=np.float32)} for _ in range(count)]


def test_profile_graph_lists_leftover_qdq_by_neighbour() -> None:
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], name="q0"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq0"),
        helper.make_node("Add", ["d", "d"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        initializer=[scale, zero],
    )
    profile = profile_graph(helper.make_model(graph), source="g.onnx")
    assert profile.unfused_dq == {"DQ feeding Add": 1}
    assert profile.unfused_q == {"Q fed by Conv": 1}
    assert profile.examples["DQ feeding Add"] == ["dq0"]
    assert profile.count("float_conv") == 1 and profile.integer_compute == 0
    assert profile.quantized_float_compute == {}  # the Conv reads the graph input, not a DQ
    table = unfused_markdown(profile)
    assert "| DQ feeding Add | 1 | `dq0` |" in table


def test_ort_uint8_qdq_is_fused_into_qlinearconv(tmp_path: Path) -> None:
    fp32 = _conv_model(tmp_path / "tiny.onnx")
    int8 = ort_quantize_static(fp32, tmp_path / "tiny.int8.onnx", _feeds(4))
    before = profile_graph(onnx.load(int8))
    assert before.count("QuantizeLinear") > 0 and before.count("DequantizeLinear") > 0
    after = profile_onnxrt(int8, tmp_path / "graphs", intra_op_threads=1)
    assert after.count("QLinearConv") == 2
    assert after.count("float_conv") == 0
    fp32_profile = profile_onnxrt(fp32, tmp_path / "graphs", intra_op_threads=1)
    assert fp32_profile.count("float_conv") == 2 and fp32_profile.integer_compute == 0
    table = profiles_markdown({"fp32": fp32_profile, "int8": after})
    assert table.count("\n") == 4 and "| int8 | 2 |" in table
    assert after.quantized_float_compute == {}


def test_interleaved_timing_times_every_backend_at_every_batch(tmp_path: Path) -> None:
    path = _conv_model(tmp_path / "tiny.onnx")
    runners = {
        "a": make_onnxrt_runner(path, providers=["CPUExecutionProvider"], intra_op_threads=1, name="a"),
        "b": make_onnxrt_runner(path, mode="reference", providers=["CPUExecutionProvider"],
                                intra_op_threads=1, name="b"),
    }
    feeds = {1: _feeds(1, 1)[0], 3: _feeds(1, 3)[0]}
    timings = interleaved_timing(runners, feeds, warmup=1, iterations=3)
    assert set(timings) == {("a", 1), ("a", 3), ("b", 1), ("b", 3)}
    for (name, batch), cell in timings.items():
        assert cell.backend == name and cell.batch == batch and len(cell.seconds) == 3
        result = cell.result()
        assert result.throughput > 0
        assert result.per_frame_ms == pytest.approx(result.batch_time_ms / batch)
    assert not any(r.is_active for r in runners.values())
    with pytest.raises(UserError, match="iterations=0"):
        interleaved_timing(runners, feeds, iterations=0)


def _timings() -> dict[tuple[str, int], Timing]:
    return {
        ("ort_fp32", 1): Timing("ort_fp32", 1, [0.10, 0.12, 0.11]),
        ("ort_fp32", 4): Timing("ort_fp32", 4, [0.40, 0.40, 0.40]),
        ("ort_int8_modelopt", 1): Timing("ort_int8_modelopt", 1, [0.22, 0.22]),
        ("ort_int8_modelopt", 4): Timing("ort_int8_modelopt", 4, [0.80, 0.80]),
    }


def test_timing_table_has_ratios_to_ort_fp32_and_to_batch_1() -> None:
    table = timing_markdown(_timings(), {"ort_fp32": "ORT FP32", "ort_int8_modelopt": "ORT INT8"})
    rows = [line for line in table.splitlines() if line.startswith("| ORT")]
    assert len(rows) == 4
    fp32_b1 = rows[0].split(" | ")
    assert fp32_b1[1:3] == ["1", "9.09"] and fp32_b1[-2] == "1.00x"
    int8_b4 = rows[3].split(" | ")
    assert int8_b4[1] == "4" and int8_b4[-2] == "0.50x"  # 5 img/s vs 10 img/s
    assert int8_b4[-1] == "1.10x |"  # 5 img/s vs 4.55 img/s at batch 1


def test_report_has_setup_table_graph_breakdown_and_kept_analysis(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text(f"# old\n\n{ANALYSIS_HEADING}\n\nhand-written text\n")
    settings = BenchSettings(out=out, checkpoint=None, batches=(1, 4))
    profile = profile_graph(onnx.load(_conv_model(tmp_path / "tiny.onnx")))
    report = render_report(
        settings,
        "python -m rtq.bench --batches 1 4",
        {"cpu": cpu_description("model name : Test CPU\nflags : avx2 avx512_vnni\n"),
         "versions": {"onnxruntime": "x"}, "load_before": "1.0", "load_after": "2.0"},
        _timings(),
        {"ort_fp32": "ORT FP32", "ort_int8_modelopt": "ORT INT8"},
        {"ort_fp32": profile},
        {"ort_int8_modelopt": {"max_abs_score_diff": 0.5, "max_abs_top10_score_diff": 0.1,
                               "mean_abs_score_diff": 0.01, "top1_label_agreement": 1.0,
                               "reference_top1_score": 0.8}},
        {"bench_fp32": "cache"},
        analysis=preserved_analysis(out),
    )
    assert "python -m rtq.bench --batches 1 4" in report
    assert "Test CPU" in report and "avx512_vnni yes" in report and "amx_int8 no" in report
    assert ("ORT INT8: batch 1: 0.50x, paired per repetition 0.50x (IQR 0.48-0.52x), "
            "batch 4: 0.50x, paired per repetition 0.50x (IQR 0.50-0.50x) of ORT FP32 "
            "(paired median misses the 1.5x goal)") in report
    assert "top-1 score averages 0.8000" in report
    assert "| ORT FP32 | 0 | 0 | 0 | 0 | 0 | 0 | 2 |" in report
    assert report.rstrip().endswith("hand-written text")
    assert preserved_analysis(tmp_path / "missing.md") == ""


def test_score_fidelity() -> None:
    scores = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
    labels = np.array([[3, 1, 2]])
    same = score_fidelity({"scores": scores, "labels": labels}, {"scores": scores, "labels": labels})
    assert same["max_abs_score_diff"] == 0.0 and same["top1_label_agreement"] == 1.0
    other = score_fidelity({"scores": scores, "labels": labels},
                           {"scores": scores - 0.25, "labels": labels + 1})
    assert other["max_abs_score_diff"] == pytest.approx(0.25) and other["top1_label_agreement"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        score_fidelity({"scores": scores, "labels": labels}, {"scores": scores[:, :2], "labels": labels})


def test_parse_args_defaults_and_user_errors() -> None:
    settings = parse_args([])
    assert settings.model == "rtdetrv2_r18vd" and settings.batches == (1, 4)
    assert parse_args(["--checkpoint", "none", "--batches", "2"]).checkpoint is None
    with pytest.raises(UserError, match="--calib-images 0"):
        parse_args(["--calib-images", "0"])
    with pytest.raises(UserError, match="--iterations 0"):
        parse_args(["--iterations", "0"])
    with pytest.raises(UserError, match="unknown model name"):
        parse_args(["--model", "resnet"])


def test_quantized_float_compute_names_the_op_that_blocks_the_fusion() -> None:
    """DQ -> Conv -> BatchNormalization: the Conv reads int8 data but has no Q after it to fuse with."""
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    bn = [numpy_helper.from_array(np.ones(1, dtype=np.float32), name) for name in ("g", "b", "m", "v")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q0"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq0"),
        helper.make_node("Conv", ["d", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        initializer=[scale, zero, *bn],
    )
    profile = profile_graph(helper.make_model(graph))
    assert profile.quantized_float_compute == {"Conv -> BatchNormalization": 1}
    assert profile.unfused_q == {"Q fed by graph input / initializer": 1}
    assert "Conv -> BatchNormalization (1)" in unfused_markdown(profile)


def _conv_add_model(path: Path) -> Path:
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w1")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="/block/conv1"),
        helper.make_node("Add", ["c1", "x"], ["a"], name="/head/add"),
        helper.make_node("Sigmoid", ["a"], ["y"], name="/head/sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[w1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_float_scopes_keep_elementwise_ops_float(tmp_path: Path) -> None:
    fp32 = _conv_add_model(tmp_path / "tiny_add.onnx")
    wide = ("Conv", "MatMul", "Add")
    everything = ort_quantize_static(fp32, tmp_path / "all.onnx", _feeds(4), op_types=wide)
    scoped = ort_quantize_static(fp32, tmp_path / "scoped.onnx", _feeds(4), op_types=wide,
                                 float_scopes=("/head/",))
    graphs = tmp_path / "graphs"
    assert profile_onnxrt(everything, graphs, intra_op_threads=1).op_counts.get("QLinearAdd") == 1
    kept = profile_onnxrt(scoped, graphs, intra_op_threads=1)
    assert "QLinearAdd" not in kept.op_counts and kept.count("QLinearConv") == 1
