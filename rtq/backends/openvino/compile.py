"""Compile an ONNX file (FP32 or Q/DQ INT8) with OpenVINO's CPU plugin, cached by content.

OpenVINO reads rtq's TensorRT-style Q/DQ ONNX unchanged: its low-precision transformations turn
each QuantizeLinear/DequantizeLinear pair into u8/i8 kernels. Everything that changes what runs is
a setting here and is recorded beside the result: the inference precision (on CPUs with bf16
support OpenVINO runs float layers in bf16 unless told `f32`), the performance hint, threads and
streams. The compiled model is cached like a TensorRT engine: the key covers the ONNX bytes, the
settings, the marked outputs, the OpenVINO version and the CPU.
"""

from __future__ import annotations

import io
import json
import platform
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from rtq.cache import ArtifactCache, cache_key, file_digest
from rtq.errors import UserError
from rtq.files import write_atomic

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
CACHE_KEY_VERSION = 2  # bump when the compile procedure changes what a key stands for
ExtraOutputs = Literal["all"] | Sequence[str] | None
_UNSUPPORTED_OPS = re.compile(
    r"(?:No conversion rule found for operations|OpenVINO does not support the following ONNX operations):"
    r"\s*([^\n]+)"
)


@dataclass(frozen=True)
class OpenVinoSettings:
    """How OpenVINO compiles and runs a model (see conf/backend/openvino.yaml)."""

    device: str = "CPU"
    inference_precision: str = "f32"
    performance_hint: str = "LATENCY"
    num_threads: int | None = None
    num_streams: int | None = None
    # PERF_COUNT: per-layer execution times in the runtime model (costs a little time per call).
    profile: bool = False

    def __post_init__(self) -> None:
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise UserError(
                f"backend.inference_precision={self.inference_precision!r} is not an OpenVINO precision "
                f"hint; use one of {', '.join(INFERENCE_PRECISIONS)}"
            )
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise UserError(
                f"backend.performance_hint={self.performance_hint!r} is unknown; use one of "
                f"{', '.join(PERFORMANCE_HINTS)}"
            )
        for key in ("num_threads", "num_streams"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise UserError(f"backend.{key}={value} must be at least 1 (or null for OpenVINO's choice)")

    @classmethod
    def from_mapping(cls, backend: Mapping[str, Any]) -> OpenVinoSettings:
        """Settings from the `backend:` config section (unknown keys are ignored)."""
        fields = {k: backend[k] for k in cls.__dataclass_fields__ if backend.get(k) is not None}
        return cls(**fields)

    def properties(self) -> dict[str, str]:
        """The compile properties handed to `Core.compile_model`."""
        props = {
            "INFERENCE_PRECISION_HINT": self.inference_precision,
            "PERFORMANCE_HINT": self.performance_hint,
            "PERF_COUNT": "YES" if self.profile else "NO",
        }
        if self.num_threads is not None:
            props["INFERENCE_NUM_THREADS"] = str(self.num_threads)
        if self.num_streams is not None:
            props["NUM_STREAMS"] = str(self.num_streams)
        return props

    def record(self) -> dict[str, Any]:
        """What a results row says ran (versions included)."""
        return {**asdict(self), "openvino": openvino_version()}


@cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def openvino_version() -> str:
    import openvino as ov

    return str(ov.get_version()).split("-")[0]


def read_model(onnx_path: str | Path, extra_outputs: ExtraOutputs = None) -> Any:
    """`ov.Model` of an ONNX file (or an OpenVINO IR `.xml`, e.g. NNCF's output), with `extra_outputs`
    ("all" or tensor names) marked as outputs.

    Marking changes what the compiler may fuse: a marked tensor must exist in memory.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; export it first or fix the path")
    if path.suffix != ".xml":
        _check_onnx(path)
    try:
        model = _core().read_model(str(path))
    except RuntimeError as err:
        raise UserError(_read_error(path, str(err))) from None
    if extra_outputs is not None:
        names = all_tensor_names(model) if extra_outputs == "all" else list(extra_outputs)
        _mark(model, path, names)
    return model


def _check_onnx(path: Path) -> None:
    """Reject a file that is not ONNX before OpenVINO tries every other front end on it."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises several types for junk bytes
        raise UserError(f"{path} is not an ONNX model ({type(err).__name__}); export it again") from None


def _read_error(path: Path, message: str) -> str:
    unsupported = _UNSUPPORTED_OPS.search(message)
    if unsupported:
        ops = unsupported.group(1).strip().rstrip(".")
        return (
            f"OpenVINO cannot read {path}: no OpenVINO implementation of ONNX op(s) {ops}; "
            "run this graph on a backend that implements them (tensorrt, onnxruntime) or pick a surgery "
            "that does not emit them"
        )
    return f"OpenVINO cannot read {path} ({_essence(message)}); check the file is a valid ONNX model"


def _essence(message: str) -> str:
    """The informative line of an OpenVINO exception (its first lines only say where it was thrown)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful[-1] if useful else lines[0] if lines else "unknown error")[:200]


def all_tensor_names(model: Any) -> list[str]:
    """Every named, non-constant tensor the model computes (what `mark all` marks)."""
    outputs = {name for port in model.outputs for name in port.get_names()}
    names: list[str] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Constant", "Parameter", "Result"):
            continue
        for port in op.outputs():
            tensor_names = sorted(port.get_names())
            if tensor_names and not outputs.intersection(tensor_names):
                names.append(tensor_names[0])
    return names


def _mark(model: Any, path: Path, names: Sequence[str]) -> None:
    known = {name for op in model.get_ops() for port in op.outputs() for name in port.get_names()}
    missing = [name for name in names if name not in known]
    if missing:
        raise UserError(
            f"tensor {missing[0]!r} is not in {path} ({len(missing)} unknown); mark tensors the graph has"
        )
    if names:
        model.add_outputs(list(names))


def compile_model(
    model: str | Path | Any, settings: OpenVinoSettings, extra_outputs: ExtraOutputs = None
) -> Any:
    """An `ov.CompiledModel` of an ONNX path (or an `ov.Model`) with the settings' properties."""
    ov_model = read_model(model, extra_outputs) if isinstance(model, str | Path) else model
    try:
        compiled = _core().compile_model(ov_model, settings.device, settings.properties())
    except RuntimeError as err:
        raise UserError(_compile_error(settings, str(err))) from None
    ran = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if ran != settings.inference_precision:
        # the CPU plugin silently substitutes a precision it has (f16 -> bf16 without AVX512-FP16)
        raise UserError(
            f"OpenVINO {settings.device} does not support backend.inference_precision="
            f"{settings.inference_precision!r} on this machine (it would run {ran}); use {ran} or f32"
        )
    return compiled


def _precision_name(value: Any) -> str:
    text = str(value).lower()
    for name, token in (("bf16", "bfloat16"), ("f16", "float16"), ("f32", "float32")):
        if token in text or text == name:
            return name
    return text


def _compile_error(settings: OpenVinoSettings, message: str) -> str:
    essence = _essence(message)
    if "INFERENCE_PRECISION_HINT" in message:
        return (
            f"OpenVINO {settings.device} does not support backend.inference_precision="
            f"{settings.inference_precision!r} on this machine ({essence[:160]}); use f32"
        )
    return f"OpenVINO could not compile the model on {settings.device}: {essence}"


def _profile_once(compiled: Any, calls: int = 3) -> None:
    """Run a batch-1 zero feed so the runtime model carries per-layer times (`execTimeMcs`): the
    layer list then says where the time goes, not only what was fused."""
    import numpy as np

    request = compiled.create_infer_request()
    feed = {}
    for port in compiled.inputs:
        shape = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
        feed[port] = np.ones(shape, dtype=port.get_element_type().to_dtype())
    for _ in range(calls):
        request.infer(feed)


def onnx_io_names(onnx_path: str | Path) -> list[str]:
    """Graph input and output names of an ONNX file: what a port is called when OpenVINO gives it
    several tensor names (an input feeding an Expand answers to both)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [value.name for value in (*graph.input, *graph.output)]


def import_compiled(blob: Path, settings: OpenVinoSettings) -> Any:
    """A compiled model exported by `build_compiled` (no recompilation)."""
    with open(blob, "rb") as handle:
        stream = io.BytesIO(handle.read())
    return _core().import_model(stream, settings.device, settings.properties())


def cpu_fingerprint() -> str:
    """CPU model name and flags that change which kernels OpenVINO picks."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"model name\s*:\s*(.+)", text)
    flags = re.search(r"flags\s*:\s*(.+)", text)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")
    present = [flag for flag in wanted if flags and flag in flags.group(1).split()]
    name = model.group(1).strip() if model else platform.processor() or platform.machine()
    return f"{name} [{' '.join(present)}]"


def marked_names(extra_outputs: ExtraOutputs) -> list[str]:
    return [] if extra_outputs in (None, "all") else list(extra_outputs or [])


def compiled_key(onnx_path: Path, settings: OpenVinoSettings, extra_outputs: ExtraOutputs = None) -> str:
    """Cache key of a compiled model: everything that changes what it runs."""
    marked = extra_outputs if extra_outputs in (None, "all") else sorted(extra_outputs or [])
    return cache_key(
        version=CACHE_KEY_VERSION,
        onnx=file_digest(onnx_path),
        settings=asdict(settings),
        outputs=marked,
        openvino=openvino_version(),
        cpu=cpu_fingerprint(),
    )


def build_json_path(blob: Path) -> Path:
    return Path(blob).with_suffix(".build.json")


def layers_json_path(blob: Path) -> Path:
    return Path(blob).with_suffix(".layers.json")


def build_compiled(
    onnx_path: str | Path,
    out: str | Path,
    settings: OpenVinoSettings,
    cache_dir: str | Path | None = None,
    extra_outputs: ExtraOutputs = None,
) -> Path:
    """Compile (or reuse from the cache) and write `out` (the exported compiled model), with
    `<stem>.build.json` (key, settings, versions) and `<stem>.layers.json` (the layer list)."""
    from rtq.backends.layers import save_layer_list
    from rtq.backends.openvino.inspect import runtime_layers

    onnx_path, out = Path(onnx_path), Path(out)
    model = read_model(onnx_path, extra_outputs)  # one clear line for a bad file, before any cache work
    key = compiled_key(onnx_path, settings, extra_outputs)

    def make(blob: Path) -> None:
        compiled = compile_model(model, settings)
        if settings.profile:
            _profile_once(compiled)
        stream = io.BytesIO()
        compiled.export_model(stream)
        blob.write_bytes(stream.getvalue())
        save_layer_list(runtime_layers(compiled, onnx_path), layers_json_path(blob))
        info = {
            "key": key,
            "onnx": str(onnx_path),
            "settings": settings.record(),
            "cpu": cpu_fingerprint(),
            "port_names": onnx_io_names(onnx_path) + marked_names(extra_outputs),
        }
        write_atomic(build_json_path(blob), json.dumps(info, indent=2))

    if cache_dir is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        make(out)
        return out
    cache = ArtifactCache(cache_dir)
    cached, _ = cache.fetch_or_make("openvino", key, "model.blob", make)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cached.resolve() != out.resolve():
        shutil.copyfile(cached, out)
        for sidecar in (build_json_path, layers_json_path):
            shutil.copyfile(sidecar(cached), sidecar(out))
    return out
