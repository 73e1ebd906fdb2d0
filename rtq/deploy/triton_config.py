"""A model's Triton `config.pbtxt`, built as Triton's own `ModelConfig` protobuf, never from templates.

Building the message (tritonclient's `model_config_pb2`) means a misspelt field or enum cannot be
written at all, and `text_format` gives the exact text the server parses. What goes in comes from
the graph: element types, dims (symbolic -> -1), and the batch: a symbolic leading dimension on
every input and output becomes Triton batching (`max_batch_size` > 0, dims without the batch,
`dynamic_batching`); a static batch 1 is served as is (`max_batch_size: 0`, full dims), which
defeats batching and is logged as such.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rtq.deploy.graph_io import Dim, ModelSignature, TensorSpec
from rtq.errors import UserError

log = logging.getLogger("rtq")

DEFAULT_MAX_BATCH = 8
KINDS = ("KIND_CPU", "KIND_GPU")
RUNTIMES = ("onnxruntime", "openvino")  # what a python-backend model runs the ONNX with
PARAM_RUNTIME, PARAM_MODEL_FILE = "runtime", "model_file"  # read by triton_python_model.py
# OpenVINO runs float layers in bf16 on CPUs that have it unless told f32 (as rtq compiles it).
PARAM_PRECISION, OPENVINO_PRECISIONS = "inference_precision", ("f32", "bf16", "f16")


@dataclass(frozen=True)
class TritonBackend:
    """How one Triton backend wants its model: config fields, file name in the version folder."""

    backend: str
    platform: str
    model_file: str
    default_kind: str
    server_default_file: str = ""  # the file the backend loads unless told; "" when it is model_file

    @property
    def loads_by_default(self) -> str:
        """The file the backend loads when the config names none."""
        return self.server_default_file or self.model_file


BACKENDS: dict[str, TritonBackend] = {
    "onnxruntime": TritonBackend("onnxruntime", "onnxruntime_onnx", "model.onnx", "KIND_CPU"),
    # The OpenVINO backend's default file is model.xml; it reads ONNX when told model.onnx.
    "openvino": TritonBackend("openvino", "", "model.onnx", "KIND_CPU", server_default_file="model.xml"),
    "tensorrt": TritonBackend("tensorrt", "tensorrt_plan", "model.plan", "KIND_GPU"),
    # A Python-backend model (rtq/deploy/triton_python_model.py) running the ONNX beside it.
    "python": TritonBackend("python", "", "model.py", "KIND_CPU"),
}

_TRITON_TYPES: dict[str, str] = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "object": "TYPE_STRING", "bfloat16": "TYPE_BF16",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DeployOptions:
    """What the user chooses; everything else comes from the graph."""

    backend: str = "onnxruntime"
    runtime: str = "onnxruntime"  # python backend only
    inference_precision: str = "f32"  # python backend running OpenVINO only
    max_batch_size: int | None = None  # None: the engine profile's max, else DEFAULT_MAX_BATCH
    preferred_batch: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    instances: int = 1
    kind: str | None = None  # None: the backend's default kind
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"backend {self.backend!r} is unknown: choose one of {', '.join(BACKENDS)}")
        if self.runtime not in RUNTIMES:
            raise UserError(f"runtime {self.runtime!r} is unknown: choose one of {', '.join(RUNTIMES)}")
        if self.inference_precision not in OPENVINO_PRECISIONS:
            raise UserError(f"inference precision {self.inference_precision!r} is unknown: choose one of "
                            f"{', '.join(OPENVINO_PRECISIONS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise UserError(f"instance kind {self.kind!r} is unknown: choose one of {', '.join(KINDS)}")
        if self.instances < 1:
            raise UserError(f"instances={self.instances} must be at least 1")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise UserError(f"max batch size {self.max_batch_size} must be 0 (no batching) or more")
        if self.max_queue_delay_us < 0:
            raise UserError(f"max queue delay {self.max_queue_delay_us} us must be 0 or more")


def check_model_name(name: str) -> str:
    """Triton names a model by its folder: one path component the server can list."""
    if not _NAME.match(name):
        raise UserError(f"model name {name!r} is not a folder name: use letters, digits, '_', '-' and '.'")
    return name


def triton_type(dtype: np.dtype[Any], tensor: str) -> int:
    """numpy dtype -> Triton `DataType` enum value."""
    name = _TRITON_TYPES.get(dtype.name)
    if name is None:
        raise UserError(f"tensor {tensor!r} has element type {dtype.name}, which Triton cannot carry: "
                        "export it with a standard type (float, int, bool)")
    return int(mc.DataType.Value(name))


def _batched(spec: TensorSpec) -> bool:
    return len(spec.dims) >= 1 and isinstance(spec.dims[0], str)


def plan_batch(signature: ModelSignature, requested: int | None) -> tuple[int, bool]:
    """(max_batch_size, whether dims drop the leading batch dimension) for this model."""
    specs = signature.inputs + signature.outputs
    label = str(signature.source)
    if all(_batched(s) for s in specs):
        low, high = signature.batch_range or (1, None)
        if low > 1:
            raise UserError(f"engine {label!r} is built for batches {low}..{high} but Triton sends any batch "
                            "from 1: rebuild it with a profile whose min batch is 1")
        size = requested if requested is not None else (high or DEFAULT_MAX_BATCH)
        if high is not None and size > high:
            raise UserError(f"max batch size {size} exceeds the {high} engine {label!r} was built for: "
                            f"pass --max-batch-size {high} or less, or rebuild with a larger profile")
        return size, size > 0
    if requested:
        raise UserError(f"{label!r} has no symbolic batch dimension on every input and output, so "
                        f"--max-batch-size {requested} cannot apply: drop it, or re-export with batch 'N' "
                        "(rtq.models.onnx_source.make_batch_dynamic)")
    if all(len(s.dims) >= 1 and s.dims[0] == 1 for s in signature.inputs):
        log.warning("%s has a static batch of 1: served with max_batch_size 0 and full dims, which defeats "
                    "Triton's batching; re-export it with a symbolic batch 'N' to batch requests", label)
    else:
        log.info("%s has no common batch dimension: served with max_batch_size 0 and full dims", label)
    return 0, False


def _dims(spec: TensorSpec, strip_batch: bool, label: str) -> list[int]:
    dims = spec.dims[1:] if strip_batch else spec.dims
    if not dims and not strip_batch:
        raise UserError(f"tensor {spec.name!r} of {label!r} is a scalar, which a non-batching Triton "
                        "model cannot take: give it shape [1] in the export")
    return triton_dims(dims)


def triton_dims(dims: Sequence[Dim]) -> list[int]:
    """Graph dims as config dims: symbolic -> -1, and none (a scalar per batch item) -> [1]."""
    return [-1 if isinstance(d, str) else int(d) for d in dims] or [1]


def _io(message: Any, spec: TensorSpec, strip_batch: bool, label: str) -> None:
    message.name = spec.name
    message.data_type = triton_type(spec.dtype, spec.name)
    message.dims.extend(_dims(spec, strip_batch, label))
    if strip_batch and len(spec.dims) == 1:  # [N] only: each batch item is a scalar
        message.reshape.SetInParent()


def build_config(signature: ModelSignature, name: str, options: DeployOptions) -> mc.ModelConfig:
    """The `ModelConfig` that serves `signature` as model `name` with `options`."""
    backend = BACKENDS[options.backend]
    label = str(signature.source)
    config = mc.ModelConfig(name=check_model_name(name), backend=backend.backend)
    if backend.platform:
        config.platform = backend.platform
    if backend.loads_by_default != backend.model_file:  # the backend must be told which file
        config.default_model_filename = backend.model_file
    max_batch, strip = plan_batch(signature, options.max_batch_size)
    config.max_batch_size = max_batch
    for spec in signature.inputs:
        _io(config.input.add(), spec, strip, label)
    for spec in signature.outputs:
        _io(config.output.add(), spec, strip, label)
    for size in options.preferred_batch:
        if not 0 < size <= max_batch:
            raise UserError(f"preferred batch {size} must be between 1 and the max batch size {max_batch}: "
                            "drop it or raise --max-batch-size")
    if max_batch > 1:
        config.dynamic_batching.preferred_batch_size.extend(options.preferred_batch)
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add()
    group.count = options.instances
    group.kind = mc.ModelInstanceGroup.Kind.Value(options.kind or backend.default_kind)
    config.version_policy.latest.num_versions = 1
    if options.backend == "python":
        config.parameters[PARAM_RUNTIME].string_value = options.runtime
        config.parameters[PARAM_MODEL_FILE].string_value = BACKENDS["onnxruntime"].model_file
        if options.runtime == "openvino":
            config.parameters[PARAM_PRECISION].string_value = options.inference_precision
    for key, value in options.extra_parameters.items():
        config.parameters[key].string_value = value
    return config


def config_text(config: mc.ModelConfig) -> str:
    """The protobuf text format Triton reads from config.pbtxt."""
    return text_format.MessageToString(config)


def parse_config(text: str, label: str) -> mc.ModelConfig:
    """Parse config.pbtxt text against Triton's schema; a bad field or enum is one line."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise UserError(f"{label} does not follow Triton's ModelConfig schema ({err}): "
                        "fix that field or regenerate it with `python -m rtq.deploy triton`") from None
    return config
