"""The PyTorch runner on tiny modules, alone and against ONNX Runtime through Polygraphy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.backends.torch import make_torch_runner


class TinyDetector(torch.nn.Module):
    """Conv features -> per-image top-2 'detections' scaled to the original size, like a deploy module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(
        self, images: torch.Tensor, orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.conv(images).mean(dim=(2, 3))  # [N, 4]
        scores, labels = logits.sigmoid().topk(2, dim=1)
        wh = orig_target_sizes.to(torch.float32).unsqueeze(1)  # [N, 1, 2]
        s = scores.unsqueeze(-1)  # [N, 2, 1]
        boxes = torch.cat([wh * 0.25 * s, wh * (0.5 + 0.25 * s)], dim=-1)
        return labels, boxes, scores


TinyDetectorOutputs = ("labels", "boxes", "scores")


def rtdetr_feed(n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.random((n, 3, 16, 16), dtype=np.float32),
        "orig_target_sizes": np.array([[640, 480], [300, 200], [50, 60]][:n], dtype=np.int64),
    }


def test_outputs_are_named_numpy_arrays_equal_to_eager() -> None:
    model = TinyDetector()
    feed = rtdetr_feed()
    with make_torch_runner(model) as runner:
        out = runner.infer(feed)
        assert runner.last_inference_time() > 0
    assert list(out) == ["labels", "boxes", "scores"]
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["labels"].dtype == np.int64 and out["boxes"].shape == (2, 2, 4)
    with torch.no_grad():
        inputs = (torch.from_numpy(feed["images"]), torch.from_numpy(feed["orig_target_sizes"]))
        labels, boxes, _ = model(*inputs)
    np.testing.assert_array_equal(out["labels"], labels.numpy())
    np.testing.assert_array_equal(out["boxes"], boxes.numpy())


def test_feed_is_checked_against_the_input_metadata() -> None:
    feed = rtdetr_feed()
    feed["orig_target_sizes"] = feed["orig_target_sizes"].astype(np.int32)
    with make_torch_runner(TinyDetector()) as runner, pytest.raises(Exception, match="dtype"):
        runner.infer(feed)


def test_dict_outputs_custom_inputs_and_threads() -> None:
    class Doubler(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"twice": 2 * x, "unused": x}

    meta = TensorMetadata().add("x", dtype=np.float32, shape=(-1, 3))
    before = torch.get_num_threads()
    runner = make_torch_runner(Doubler(), output_names=("twice",), input_metadata=meta, num_threads=1)
    with runner:
        assert torch.get_num_threads() == 1
        out = runner.infer({"x": np.ones((2, 3), np.float32)})
    assert torch.get_num_threads() == before
    assert list(out) == ["twice"] and np.all(out["twice"] == 2.0)


def test_wrong_number_of_output_names_is_reported() -> None:
    with make_torch_runner(TinyDetector(), output_names=("labels", "boxes")) as runner:
        with pytest.raises(ValueError, match="3 outputs but 2 output names"):
            runner.infer(rtdetr_feed())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, required for modelopt
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Polygraphy's relative error of all-zero labels
def test_matches_onnxruntime_on_the_exported_model(tmp_path: Path) -> None:
    model = TinyDetector().eval()
    path = tmp_path / "tiny.onnx"
    feed = rtdetr_feed(3)
    torch.onnx.export(
        model,
        (torch.from_numpy(feed["images"]), torch.from_numpy(feed["orig_target_sizes"])),
        str(path),
        input_names=["images", "orig_target_sizes"],
        output_names=list(TinyDetectorOutputs),
        dynamic_axes={name: {0: "N"} for name in ("images", "orig_target_sizes", *TinyDetectorOutputs)},
        opset_version=17,
        dynamo=False,
    )
    runners = [make_torch_runner(model), make_onnxrt_runner(path, mode="reference")]
    results = Comparator.run(runners, data_loader=[feed])
    assert bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-5, rtol=1e-5)))
