"""Model folders written from rtq's artifacts: ONNX Runtime, OpenVINO, TensorRT, End2End, static batch."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from deploy_models import end2end_yolox, needs_yolox, qdq_conv, stand_in_engine
from tiny_onnx import conv_model
from tritonclient.grpc import model_config_pb2 as mc

from rtq.deploy.__main__ import main
from rtq.deploy.triton_check import model_dir_problems
from rtq.deploy.triton_config import DeployOptions, parse_config
from rtq.deploy.triton_repo import PYTHON_MODEL, write_triton_model
from rtq.errors import UserError


def _reread(model_dir: Path) -> mc.ModelConfig:
    """The file as the server reads it: parsed by Triton's schema, and clean of offline problems."""
    assert model_dir_problems(model_dir) == []
    return parse_config((model_dir / "config.pbtxt").read_text(), "config.pbtxt")


def _files(model_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())


def test_int8_qdq_onnx_for_onnxruntime_and_openvino(tmp_path: Path) -> None:
    qdq = qdq_conv(tmp_path)
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(qdq)).graph.node)
    ort = write_triton_model(qdq, tmp_path / "repo", "conv_ort", DeployOptions(preferred_batch=(4,)))
    assert ort.model_dir == tmp_path / "repo" / "conv_ort"
    assert _files(ort.model_dir) == ["1/model.onnx", "config.pbtxt"]
    assert (ort.model_dir / "1" / "model.onnx").read_bytes() == qdq.read_bytes()
    config = _reread(ort.model_dir)
    assert (config.platform, config.backend, config.max_batch_size) == ("onnxruntime_onnx", "onnxruntime", 8)
    assert list(config.input[0].dims) == [4, 8, 8]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]

    ov = write_triton_model(qdq, tmp_path / "repo", "conv_ov", DeployOptions(backend="openvino", instances=2))
    config = _reread(ov.model_dir)
    assert (config.backend, config.platform, config.default_model_filename) == ("openvino", "", "model.onnx")
    assert _files(ov.model_dir) == ["1/model.onnx", "config.pbtxt"] and config.instance_group[0].count == 2


def test_engine_gets_a_tensorrt_plan_folder_from_its_build_record(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    plan = stand_in_engine(run, conv_model(run / "model.int8.onnx"), max_batch=16)
    written = write_triton_model(plan, tmp_path / "repo", "conv_trt", DeployOptions(backend="tensorrt"))
    assert _files(written.model_dir) == ["1/model.plan", "config.pbtxt"]
    config = _reread(written.model_dir)
    assert (config.platform, config.backend, config.max_batch_size) == ("tensorrt_plan", "tensorrt", 16)
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert [io.name for io in config.input] == ["x"] and list(config.output[0].dims) == [8, 8, 8]


@needs_yolox
def test_end2end_graph_serves_its_detection_outputs_through_the_python_backend(tmp_path: Path) -> None:
    e2e = end2end_yolox(tmp_path)
    written = write_triton_model(e2e, tmp_path / "repo", "yolox_e2e", DeployOptions(backend="python"))
    assert _files(written.model_dir) == ["1/model.onnx", "1/model.py", "config.pbtxt"]
    assert (written.model_dir / "1" / "model.py").read_text() == PYTHON_MODEL.read_text()
    config = _reread(written.model_dir)
    outputs = {io.name: (mc.DataType.Name(io.data_type), list(io.dims)) for io in config.output}
    assert outputs == {"num_dets": ("TYPE_INT32", [1]), "det_boxes": ("TYPE_FP32", [100, 4]),
                       "det_scores": ("TYPE_FP32", [100]), "det_classes": ("TYPE_INT32", [100])}
    assert config.backend == "python" and config.parameters["runtime"].string_value == "onnxruntime"


@needs_yolox
def test_static_batch_one_file_and_rewriting_a_folder(tmp_path: Path) -> None:
    from deploy_models import YOLOX

    repo = tmp_path / "repo"
    write_triton_model(YOLOX, repo, "yolox", DeployOptions(max_batch_size=0))
    again = write_triton_model(YOLOX, repo, "yolox", DeployOptions(backend="openvino"))
    config = _reread(again.model_dir)
    assert config.backend == "openvino" and config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 3, 416, 416] and list(config.output[0].dims) == [1, 3549, 85]
    assert sorted(p.name for p in repo.iterdir()) == ["yolox"]  # no staging folder left behind


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    onnx_path = conv_model(tmp_path / "conv.onnx")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"stand-in")
    (tmp_path / "weights.bin").write_bytes(b"")
    cases = [
        (tmp_path / "missing.onnx", DeployOptions(), "does not exist"),
        (tmp_path / "weights.bin", DeployOptions(), "neither .onnx nor a TensorRT engine"),
        (plan, DeployOptions(), "only the tensorrt backend serves"),
        (onnx_path, DeployOptions(backend="tensorrt"), "backend tensorrt serves engines"),
    ]
    for model, options, match in cases:
        with pytest.raises(UserError, match=match) as err:
            write_triton_model(model, tmp_path / "repo", "m", options)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "repo" / "m").exists()


def test_command_line_writes_checks_and_exits_2_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = conv_model(tmp_path / "conv.onnx")
    repo = tmp_path / "repo"
    base = ["triton", "--model", str(onnx_path), "--name", "conv", "--out", str(repo)]
    args = [*base, "--max-batch-size", "4", "--preferred-batch", "2", "4", "--instances", "2",
            "--kind", "KIND_CPU"]
    assert main(args) == 0
    config = _reread(repo / "conv")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert main(["check", str(repo)]) == 0
    assert "conv: ok" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ended:
        main([*base, "--backend", "python", "--preferred-batch", "16"])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: preferred batch 16") and "\n" not in err
