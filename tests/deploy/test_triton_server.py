"""The real tritonserver's verdict on generated folders, and end-to-end serving on this CPU.

The server (nvidia-pytriton's wheel, `./workflow.sh triton-setup`) has only the Python backend, so
the ONNX Runtime, OpenVINO and TensorRT folders are refused for want of their backend, after the
server has parsed and validated their configs; Python-backend folders load and serve, and what they
serve must equal rtq's own ONNX Runtime runner on the same file.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from deploy_models import end2end_yolox, needs_yolox, qdq_conv, stand_in_engine, yolox_images
from tiny_onnx import conv_model, random_feeds

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.deploy.triton_check import model_dir_problems
from rtq.deploy.triton_config import DeployOptions
from rtq.deploy.triton_repo import write_triton_model
from rtq.deploy.triton_server import find_triton, server_verdict, serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_triton() is None, reason="no tritonserver here: run ./workflow.sh triton-setup"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    run = folder / "run"
    run.mkdir()
    qdq = qdq_conv(run)
    return {"qdq": qdq, "plan": stand_in_engine(run, qdq), "conv": conv_model(folder / "conv.onnx")}


def _reference(onnx_path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    runner = make_onnxrt_runner(onnx_path, mode="fast")
    with runner:
        return {k: np.asarray(v) for k, v in runner.infer(feed).items()}


def test_server_refuses_backends_it_lacks_after_accepting_their_configs(models: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_triton_model(models["qdq"], repo, "conv_ort")
    write_triton_model(models["qdq"], repo, "conv_ov", DeployOptions(backend="openvino"))
    write_triton_model(models["plan"], repo, "conv_trt", DeployOptions(backend="tensorrt"))
    for name, backend in (("conv_ort", "onnxruntime"), ("conv_ov", "openvino"), ("conv_trt", "tensorrt")):
        verdict = server_verdict(repo, [name])
        assert not verdict.loaded
        assert verdict.errors == [
            f"failed to load '{name}' version 1: Invalid argument: unable to find backend library for "
            f"backend '{backend}', try specifying runtime on the model configuration."
        ], verdict.log


@pytest.mark.parametrize(
    ("old", "new", "server_says", "offline_says"),
    [
        ("dynamic_batching {\n}", "dynamic_batching {\n  preferred_batch_size: 16\n}",
         "dynamic batching preferred size must be <= max batch size for broken",
         "preferred size 16 must be positive and <= max_batch_size 8"),
        ("  dims: 8\n  dims: 8\n  dims: 8\n}", "  dims: 0\n  dims: 8\n  dims: 8\n}",
         "model output 'y' dimension must be integer >= 1, or -1 to indicate a variable-size dimension "
         "for broken",
         "each dimension must be >= 1"),
    ],
)
def test_server_and_offline_check_refuse_the_same_broken_config(
    models: dict[str, Path], tmp_path: Path, old: str, new: str, server_says: str, offline_says: str
) -> None:
    repo = tmp_path / "repo"
    folder = write_triton_model(models["conv"], repo, "broken", DeployOptions(backend="python")).model_dir
    assert server_verdict(repo, ["broken"]).loaded  # the unbroken folder loads
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace(old, new, 1))
    verdict = server_verdict(repo, ["broken"])
    assert not verdict.loaded
    assert verdict.errors == [f"Poll failed for model directory 'broken': {server_says}"], verdict.log
    assert any(offline_says in p for p in model_dir_problems(folder))


@needs_yolox
def test_end2end_yolox_served_on_cpu_equals_rtq_runner(models: dict[str, Path], tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    e2e = end2end_yolox(tmp_path)
    repo = tmp_path / "repo"
    # A long queue delay so that concurrent single-image requests meet in one batch.
    options = DeployOptions(backend="python", max_batch_size=4, max_queue_delay_us=500_000)
    write_triton_model(e2e, repo, "yolox_e2e", options)
    write_triton_model(models["conv"], repo, "conv_ov", DeployOptions(backend="python", runtime="openvino"))
    images = yolox_images(3)
    names = ["num_dets", "det_boxes", "det_scores", "det_classes"]
    with serving(repo, ["yolox_e2e", "conv_ov"]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def request(batch: np.ndarray) -> list[grpcclient.InferInput]:
            feed = grpcclient.InferInput("images", list(batch.shape), "FP32")
            feed.set_data_from_numpy(batch)
            return [feed]

        whole = client.infer("yolox_e2e", request(images[:2]), outputs=[grpcclient.InferRequestedOutput(n)
                                                                         for n in names])
        replies: list[object] = []
        for i in range(3):
            client.async_infer("yolox_e2e", request(images[i:i + 1]), request_id=str(i),
                               callback=lambda result, error: replies.append(error or result))
        deadline = time.monotonic() + 30
        while len(replies) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = client.get_inference_statistics("yolox_e2e").model_stats[0]
        conv_feed = random_feeds(1, batch=2)[0]["x"]
        conv_input = grpcclient.InferInput("x", list(conv_feed.shape), "FP32")
        conv_input.set_data_from_numpy(conv_feed)
        conv_served = client.infer("conv_ov", [conv_input]).as_numpy("y")

    reference = _reference(e2e, {"images": images})
    assert len(replies) == 3 and all(not isinstance(r, Exception) for r in replies), replies
    assert stats.inference_count == 5 and stats.execution_count < 4  # the three single requests were batched
    served = [{n: whole.as_numpy(n) for n in names}]
    for reply in sorted(replies, key=lambda r: int(r.get_response().id)):  # type: ignore[attr-defined]
        served.append({n: reply.as_numpy(n) for n in names})  # type: ignore[attr-defined]
    by_image = {n: np.concatenate([served[0][n], *[s[n] for s in served[1:]]]) for n in names}
    order = [0, 1, *range(3)]  # whole batch (images 0, 1), then the three singles in sending order
    for n in names:
        ref = reference[n][order]
        if by_image[n].dtype.kind == "i":
            np.testing.assert_array_equal(by_image[n], ref)
        else:
            np.testing.assert_allclose(by_image[n], ref, rtol=1e-5, atol=1e-3)
    assert int(reference["num_dets"].sum()) > 0
    same_batch = _reference(e2e, {"images": images[:2]})  # the same file, batch and ONNX Runtime version
    for n in names:
        np.testing.assert_array_equal(served[0][n], same_batch[n])
    conv_reference = _reference(models["conv"], {"x": conv_feed})["y"]
    np.testing.assert_allclose(conv_served, conv_reference, rtol=1e-4, atol=1e-4)


def test_serving_a_folder_the_server_refuses_is_one_line(tmp_path: Path, models: dict[str, Path]) -> None:
    from rtq.errors import UserError

    repo = tmp_path / "repo"
    write_triton_model(models["conv"], repo, "conv")
    with pytest.raises(UserError, match="unable to find backend library for backend 'onnxruntime'") as err:
        with serving(repo, ["conv"]):
            pass
    assert "\n" not in str(err.value)
