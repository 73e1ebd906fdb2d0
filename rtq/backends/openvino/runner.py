"""A Polygraphy runner for an OpenVINO compiled model.

Polygraphy has no OpenVINO backend, so this small `BaseRunner` takes a lazy loader (an ONNX path
compiled on activation, or a compiled model exported by the build stage) and returns numpy
outputs named like the ONNX ones. With it `Comparator`, evaluation and timing treat OpenVINO like
ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from rtq.backends.openvino.compile import (
    ExtraOutputs,
    OpenVinoSettings,
    build_json_path,
    compile_model,
    import_compiled,
    marked_names,
    onnx_io_names,
)


class OpenVinoRunner(BaseRunner):
    """Runs the compiled model `load()` returns; outputs keep their ONNX tensor names."""

    def __init__(
        self, load: Callable[[], Any], name: str | None = None, port_names: Sequence[str] = ()
    ) -> None:
        super().__init__(name=name, prefix="openvino-runner")
        self._load = load
        self._preferred = frozenset(port_names)
        self.compiled: Any = None

    def _name(self, port: Any) -> str:
        """The port's ONNX tensor name (an imported model may list another of its names first)."""
        preferred = sorted(self._preferred.intersection(port.get_names()))
        return preferred[0] if preferred else str(port.get_any_name())

    def activate_impl(self) -> None:
        self.compiled = self._load()
        self._request = self.compiled.create_infer_request()
        self._output_names = [self._name(port) for port in self.compiled.outputs]

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for port in self.compiled.inputs:
            shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
            dtype = DataType.from_dtype(np.dtype(port.get_element_type().to_dtype()))
            meta.add(self._name(port), dtype=dtype, shape=shape)
        return meta

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        by_port = {self._name(port): port for port in self.compiled.inputs}
        feed = {by_port[name]: np.ascontiguousarray(value) for name, value in feed_dict.items()}
        start = time.perf_counter()
        results = self._request.infer(feed)
        self.inference_time = time.perf_counter() - start
        # the request reuses its output buffers: copy before the next call overwrites them
        return OrderedDict(
            (name, np.array(results[port], copy=True))
            for name, port in zip(self._output_names, self.compiled.outputs, strict=True)
        )

    def deactivate_impl(self) -> None:
        del self._request
        self.compiled = None


def make_openvino_runner(
    model: str | Path,
    settings: OpenVinoSettings | None = None,
    extra_outputs: ExtraOutputs = None,
    name: str | None = None,
) -> OpenVinoRunner:
    """A runner for an ONNX file (compiled on activation) or a `.blob` from `build_compiled`."""
    settings = settings or OpenVinoSettings()
    path = Path(model)
    if path.suffix == ".blob":
        if extra_outputs is not None:
            raise ValueError("a compiled .blob has its outputs fixed; mark outputs on the ONNX instead")
        info = json.loads(build_json_path(path).read_text()) if build_json_path(path).is_file() else {}
        return OpenVinoRunner(
            lambda: import_compiled(path, settings),
            name=name or f"openvino-{path.stem}",
            port_names=info.get("port_names", ()),
        )
    return OpenVinoRunner(
        lambda: compile_model(path, settings, extra_outputs),
        name=name or f"openvino-{path.stem}",
        port_names=onnx_io_names(path) + marked_names(extra_outputs),
    )
