"""A Polygraphy runner for a PyTorch deploy module.

Polygraphy's own `PytRunner` moves every input to CUDA and cannot run on a CPU-only machine, so
this small `BaseRunner` subclass runs the module on whatever device its weights are on, under
`torch.inference_mode()`, and returns numpy outputs named like the ONNX / TensorRT ones. With it,
`Comparator`, RunResults JSON, evaluation and FPS timing treat the PyTorch model like any backend.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from rtq.models.io import DETECTION_OUTPUTS


def detector_input_metadata() -> TensorMetadata:
    """The RT-DETR deploy feed: images float32 [N,3,H,W] in 0..1 and orig_target_sizes int64 [N,2]."""
    meta = TensorMetadata()
    meta.add("images", dtype=np.float32, shape=(-1, 3, -1, -1))
    meta.add("orig_target_sizes", dtype=np.int64, shape=(-1, 2))
    return meta


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            return tensor.device
    return torch.device("cpu")


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class TorchRunner(BaseRunner):
    """Runs a `torch.nn.Module` whose forward takes the feed tensors in `input_metadata` order."""

    def __init__(
        self,
        model: torch.nn.Module,
        input_metadata: TensorMetadata,
        output_names: Sequence[str] = DETECTION_OUTPUTS,
        num_threads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, prefix="torch-runner")
        self._model = model
        self._input_metadata = input_metadata
        self.output_names = tuple(output_names)
        self._num_threads = num_threads
        self._saved_num_threads: int | None = None

    def activate_impl(self) -> None:
        self._model.eval()
        self._device = _model_device(self._model)
        if self._num_threads is not None:
            self._saved_num_threads = torch.get_num_threads()
            torch.set_num_threads(self._num_threads)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._input_metadata

    def _name_outputs(self, raw: Any) -> OrderedDict[str, np.ndarray]:
        if isinstance(raw, Mapping):
            return OrderedDict((name, _as_numpy(raw[name])) for name in self.output_names)
        values = [raw] if isinstance(raw, torch.Tensor) else list(raw)
        if len(values) != len(self.output_names):
            raise ValueError(
                f"the model returned {len(values)} outputs but {len(self.output_names)} output names "
                f"were given: {list(self.output_names)}"
            )
        return OrderedDict((name, _as_numpy(v)) for name, v in zip(self.output_names, values, strict=True))

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        with torch.inference_mode():
            inputs = [
                torch.as_tensor(np.ascontiguousarray(feed_dict[name]), device=self._device)
                for name in self._input_metadata.keys()
            ]
            start = time.perf_counter()
            raw = self._model(*inputs)
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            self.inference_time = time.perf_counter() - start
            return self._name_outputs(raw)

    def deactivate_impl(self) -> None:
        if self._saved_num_threads is not None:
            torch.set_num_threads(self._saved_num_threads)
            self._saved_num_threads = None
        del self._device


def make_torch_runner(
    model: torch.nn.Module,
    output_names: Sequence[str] = DETECTION_OUTPUTS,
    num_threads: int | None = None,
    input_metadata: TensorMetadata | None = None,
    name: str | None = None,
) -> TorchRunner:
    """A runner for a deploy module; the inputs default to the RT-DETR feed (`detector_input_metadata`)."""
    return TorchRunner(
        model,
        input_metadata if input_metadata is not None else detector_input_metadata(),
        output_names=output_names,
        num_threads=num_threads,
        name=name,
    )
