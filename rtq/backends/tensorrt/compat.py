"""Every difference between TensorRT versions (10.x vs 11.x) lives here and nowhere else.

The rest of the backend asks this module *what* to do (create a strongly typed network? set the
FP16 builder flag? convert the ONNX to fp16 first?) and *how* to do the version-dependent calls
(plugin library loading, engine inspector JSON). `tensorrt` is imported lazily so rtq imports and
its pure-Python parts are testable on machines without TensorRT.

Differences handled:
- TRT < 10: networks need the EXPLICIT_BATCH creation flag; TRT >= 10 has only explicit batch.
- TRT 10: strong typing is opt-in (STRONGLY_TYPED flag) and excludes precision flags; weakly
  typed builds take FP16/INT8 builder flags.
- TRT >= 11: every network is strongly typed and the FP16/INT8 builder flags are gone, so FP16
  engines (and INT8 engines with FP16 elsewhere) are built from an ONNX whose float parts modelopt's
  autocast converted to fp16 (Q/DQ pairs and fp32 I/O kept). Every engine records what was built
  (`NetworkSettings.built`: "int8 fp32", "int8 fp16", "fp16", "fp32"), whatever the flags were.
- Plugin libraries: `IPluginRegistry.load_library` (TRT >= 10, uses the library's
  `getCreators`; None when it fails or a creator is registered already); older versions only have
  ctypes. Libraries are loaded once per process and never embedded in the plan.
- Engine inspector JSON: TRT 10 lists I/O names under "Bindings", TRT 11 objects under
  "I/O Tensors".
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from rtq.errors import StageSkipped, UserError
from rtq.files import save_onnx_atomic

Precision = Literal["int8_qdq", "int8_fp16", "fp16", "fp32"]
# int8_qdq: INT8 where the Q/DQ ONNX says, float parts as typed there (fp32 when strongly typed);
# int8_fp16: the same with the float parts in fp16 ("INT8 with FP16 elsewhere").
PRECISIONS: tuple[str, ...] = ("int8_qdq", "int8_fp16", "fp16", "fp32")
# Plugin ops the fp16 conversion leaves alone (their I/O types are the plugin's, not ONNX's).
PLUGIN_OPS = ("fused_attn_offset_prediction", "EfficientNMS_TRT")
TRT_MISSING = "TensorRT not installed"


class PluginRegistry(Protocol):
    """The part of `trt.IPluginRegistry` rtq uses."""

    def load_library(self, path: str) -> Any: ...


class EngineInspector(Protocol):
    def get_engine_information(self, format: Any) -> str: ...


class CudaEngine(Protocol):
    def create_engine_inspector(self) -> EngineInspector: ...


class TensorRTModule(Protocol):
    """The attributes of the `tensorrt` module rtq touches (tensorrt-stubs is not usable)."""

    __version__: str
    NetworkDefinitionCreationFlag: Any
    ProfilingVerbosity: Any
    LayerInformationFormat: Any
    MemoryPoolType: Any

    def get_plugin_registry(self) -> PluginRegistry: ...

    def init_libnvinfer_plugins(self, logger: Any, namespace: str) -> bool: ...


def import_tensorrt() -> TensorRTModule:
    """Import `tensorrt` or raise StageSkipped, so stages needing it are skipped, not crashed."""
    try:
        import tensorrt
    except ImportError as err:
        raise StageSkipped(TRT_MISSING) from err
    # `tensorrt-stubs` alone leaves an importable namespace package with no bindings in it.
    if not hasattr(tensorrt, "Builder"):
        raise StageSkipped(TRT_MISSING)
    return cast(TensorRTModule, tensorrt)


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except StageSkipped:
        return False
    return True


def parse_version(version: str) -> tuple[int, int]:
    """'10.13.0.35' -> (10, 13). Raises ValueError on text that is not a version."""
    match = re.match(r"^(\d+)\.(\d+)", version.strip())
    if not match:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class TrtFeatures:
    """What a TensorRT version can do, derived from its version number only (pure, testable)."""

    major: int
    minor: int

    @classmethod
    def from_version(cls, version: str) -> TrtFeatures:
        major, minor = parse_version(version)
        return cls(major, minor)

    @property
    def needs_explicit_batch_flag(self) -> bool:
        return self.major < 10

    @property
    def always_strongly_typed(self) -> bool:
        return self.major >= 11

    @property
    def has_strongly_typed_flag(self) -> bool:
        """The flag exists from 9.x; on 11.x it is redundant, so rtq never sets it there."""
        return 9 <= self.major < 11

    @property
    def has_precision_flags(self) -> bool:
        return self.major < 11

    @property
    def has_load_library(self) -> bool:
        return self.major >= 10

    @property
    def inspector_io_key(self) -> str:
        return "I/O Tensors" if self.major >= 11 else "Bindings"


@dataclass(frozen=True)
class NetworkSettings:
    """How to create the network and builder config for one precision on one TRT version."""

    explicit_batch: bool | None  # None: let Polygraphy decide (no flag on TRT >= 10)
    strongly_typed_flag: bool  # pass NetworkDefinitionCreationFlag.STRONGLY_TYPED
    strongly_typed: bool  # the network *is* strongly typed (flag or TRT >= 11)
    fp16_flag: bool
    int8_flag: bool
    convert_onnx_to_fp16: bool
    int8: bool = False  # INT8 layers: Q/DQ pairs (strongly typed) or the INT8 flag (weakly typed)

    @property
    def built(self) -> str:
        """What the engine runs: INT8 layers or not, and the precision of the float parts."""
        half = self.fp16_flag or self.convert_onnx_to_fp16
        return f"{'int8 ' if self.int8 else ''}{'fp16' if half else 'fp32'}"


def network_settings(features: TrtFeatures, precision: str, strongly_typed: bool = True) -> NetworkSettings:
    """Pick network flags / builder flags / ONNX conversion for `precision`.

    Strongly typed (the default, and the only mode on TRT 11) means types come from the ONNX:
    Q/DQ pairs make INT8 layers, fp32 elsewhere; FP16 (also around INT8) needs an fp16 ONNX. Weakly
    typed (TRT 10 only, `strongly_typed=False`) lets the builder pick FP16 for non-quantized layers.
    """
    if precision not in PRECISIONS:
        raise UserError(f"backend.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    typed = strongly_typed or features.always_strongly_typed
    explicit_batch = True if features.needs_explicit_batch_flag else None
    int8 = precision.startswith("int8")
    if typed:
        return NetworkSettings(
            explicit_batch=explicit_batch,
            strongly_typed_flag=features.has_strongly_typed_flag,
            strongly_typed=True,
            fp16_flag=False,
            int8_flag=False,
            convert_onnx_to_fp16=precision in ("fp16", "int8_fp16"),
            int8=int8,
        )
    return NetworkSettings(
        explicit_batch=explicit_batch,
        strongly_typed_flag=False,
        strongly_typed=False,
        fp16_flag=precision in ("fp16", "int8_qdq", "int8_fp16"),
        int8_flag=int8,
        convert_onnx_to_fp16=False,
        int8=int8,
    )


def convert_onnx_to_fp16(src: Path, dst: Path) -> Path:
    """Write a copy of `src` whose float parts are fp16 (modelopt's autocast), Q/DQ pairs and fp32
    inputs/outputs kept, so a strongly typed network builds FP16 layers and feeds stay unchanged."""
    import onnx
    from modelopt.onnx.autocast import convert_to_f16

    model = onnx.load(str(src))
    plugins = sorted({n.op_type for n in model.graph.node if n.op_type in PLUGIN_OPS})
    converted = convert_to_f16(model, low_precision_type="fp16", keep_io_types=True, op_block_list=plugins)
    return save_onnx_atomic(converted, dst)


# Plugin libraries this process has loaded (resolved path -> handle): TensorRT refuses a second
# `load_library` of the same creators, so a build followed by a run must not load one twice.
_LOADED_LIBRARIES: dict[Path, Any] = {}


def load_plugin_libraries(trt: TensorRTModule, libraries: Sequence[Path]) -> list[Any]:
    """Load plugin libraries so their creators are registered; keep the handles alive.

    TRT >= 10 uses `IPluginRegistry.load_library`, which calls the library's `getCreators`
    entry point (what `plugin_v3.cpp` exports) and returns None when the library cannot be loaded
    or one of its creators is registered already; that is an error here, at the library, rather
    than the parser's later "Plugin not found". Older versions fall back to ctypes, which only
    works for libraries that register themselves statically.
    """
    features = TrtFeatures.from_version(trt.__version__)
    handles: list[Any] = []
    for library in libraries:
        path = Path(library).resolve()
        if path in _LOADED_LIBRARIES:
            handles.append(_LOADED_LIBRARIES[path])
            continue
        if not path.is_file():
            raise UserError(
                f"plugin library {path} does not exist: build it with "
                f"`cmake -S {path.parent.parent} -B {path.parent} && cmake --build {path.parent}`"
            )
        if features.has_load_library:
            handle = trt.get_plugin_registry().load_library(str(path))
            if handle is None:
                raise UserError(
                    f"TensorRT could not load plugin library {path}: it failed to load (wrong TensorRT or "
                    "CUDA version, no getCreators entry point) or registers a creator another library "
                    "or the Python plugin already registered; rebuild it against this TensorRT"
                )
        else:
            handle = ctypes.CDLL(str(path))
        _LOADED_LIBRARIES[path] = handle
        handles.append(handle)
    return handles


def engine_information(trt: TensorRTModule, engine: CudaEngine) -> dict[str, Any]:
    """The engine inspector's JSON for the whole engine, as a dict.

    Layer detail needs `ProfilingVerbosity.DETAILED` at build time (build.py sets it).
    """
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    info = json.loads(text)
    if not isinstance(info, dict):
        raise ValueError("engine inspector returned JSON that is not an object")
    return info


def engine_io_names(info: dict[str, Any]) -> list[str]:
    """I/O tensor names from inspector JSON of either version ("Bindings" or "I/O Tensors")."""
    if "I/O Tensors" in info:
        return [str(t.get("Name", "")) for t in info["I/O Tensors"] if isinstance(t, dict)]
    return [str(name) for name in info.get("Bindings", [])]


def gpu_name() -> str:
    """Name of CUDA device 0 (as CUDA numbers them); engines are only valid on the GPU they were tuned for.

    Asked from the CUDA driver (`libcuda`, present wherever the NVIDIA driver is), not from torch:
    rtq installs the CPU build of torch, which sees no GPU even where TensorRT runs.
    """
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise StageSkipped("no CUDA GPU available (no NVIDIA driver: libcuda not found)")
    status = driver.cuInit(0)
    if status != 0:
        raise StageSkipped(f"no CUDA GPU available (cuInit returned CUDA error {status})")
    device = ctypes.c_int()
    status = driver.cuDeviceGet(ctypes.byref(device), 0)
    if status != 0:
        raise StageSkipped(f"no CUDA GPU available (cuDeviceGet returned CUDA error {status})")
    buffer = ctypes.create_string_buffer(256)
    if driver.cuDeviceGetName(buffer, len(buffer), device) != 0:
        raise StageSkipped("no CUDA GPU available (cuDeviceGetName failed)")
    return buffer.value.decode(errors="replace")
