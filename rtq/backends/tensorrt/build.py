"""Build a TensorRT engine from an ONNX file with Polygraphy's loaders, cached by content.

The cache key covers everything that changes the plan: ONNX bytes, the build settings,
plugin library bytes, the TensorRT version and the GPU. The engine is written next to a
`<stem>.build.json` (key, settings, plugin libraries: the runner reads it to load plugins) and
`<stem>.layers.json` (engine inspector JSON with DETAILED verbosity, the input of inspect.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtq.backends.tensorrt import compat
from rtq.backends.tensorrt.python_plugin import (
    FUSED_OP,
    PROJECT_ROOT,
    PYTHON_PLUGIN_FILE,
    fused_nodes,
    register_python_plugin,
)
from rtq.errors import UserError
from rtq.files import write_atomic

Shape = tuple[int, ...]
DEFAULT_WORKSPACE_BYTES = 4 << 30
CACHE_KEY_VERSION = 2  # bump when the build procedure changes what a key stands for
FUSED_PLUGIN_KINDS = ("cpp", "python")
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")  # file names a serialized TensorRT engine goes by


@dataclass(frozen=True)
class InputProfile:
    """min/opt/max shape of one network input for the optimization profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise UserError(f"profile shapes min={self.min} opt={self.opt} max={self.max} differ in rank")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not (0 < lo <= mid <= hi):
                raise UserError(
                    f"profile shapes min={self.min} opt={self.opt} max={self.max} must satisfy "
                    "0 < min <= opt <= max in every dimension"
                )


@dataclass(frozen=True)
class EngineBuildConfig:
    """Everything that decides how an engine is built (see conf/backend/tensorrt.yaml)."""

    precision: str = "int8_qdq"
    profiles: Mapping[str, InputProfile] = field(default_factory=dict)
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    timing_cache: Path | None = None
    plugin_libraries: tuple[Path, ...] = ()
    strongly_typed: bool = True
    builder_optimization_level: int | None = None
    # TF32 for FP32 layers: TensorRT's own default is on, Polygraphy's off; rtq records which ran.
    tf32: bool = False
    # Implementation of the fused_attn_offset_prediction node, used only if the ONNX has one.
    fused_plugin: str = "cpp"
    fused_plugin_library: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in compat.PRECISIONS:
            raise UserError(
                f"backend.precision={self.precision!r} is not one of {', '.join(compat.PRECISIONS)}"
            )
        if self.workspace_bytes <= 0:
            raise UserError(f"backend.workspace_mib must be positive, got {self.workspace_bytes} bytes")
        if self.fused_plugin not in FUSED_PLUGIN_KINDS:
            raise UserError(
                f"backend.plugin={self.fused_plugin!r} is not one of {', '.join(FUSED_PLUGIN_KINDS)}"
            )
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise UserError(f"backend.builder_optimization_level={level} must be between 0 and 5")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], base_dir: Path | None = None) -> EngineBuildConfig:
        """Read the `backend` config group (plain dict or OmegaConf converted to a container).

        `profile` maps input name -> {min, opt, max}; `workspace_mib` is MiB; relative plugin /
        timing cache paths are resolved against `base_dir` (the project root).
        """
        base = base_dir or Path.cwd()
        profiles: dict[str, InputProfile] = {}
        for name, shapes in dict(cfg.get("profile") or {}).items():
            try:
                profiles[str(name)] = InputProfile(
                    min=_shape(shapes["min"]), opt=_shape(shapes["opt"]), max=_shape(shapes["max"])
                )
            except (KeyError, TypeError) as err:
                raise UserError(
                    f"backend.profile.{name} must have min, opt and max lists of ints, got {shapes!r}"
                ) from err
        timing_cache = cfg.get("timing_cache")
        libraries = [Path(p) for p in (cfg.get("plugin_libraries") or [])]
        level = cfg.get("builder_optimization_level")
        fused_library = cfg.get("plugin_library")
        return cls(
            precision=str(cfg.get("precision", "int8_qdq")),
            profiles=profiles,
            workspace_bytes=int(cfg.get("workspace_mib", DEFAULT_WORKSPACE_BYTES >> 20)) << 20,
            timing_cache=_resolve(Path(timing_cache), base) if timing_cache else None,
            plugin_libraries=tuple(_resolve(p, base) for p in libraries),
            strongly_typed=bool(cfg.get("strongly_typed", True)),
            builder_optimization_level=None if level is None else int(level),
            tf32=bool(cfg.get("tf32", False)),
            fused_plugin=str(cfg.get("plugin", "cpp")),
            fused_plugin_library=_resolve(Path(fused_library), base) if fused_library else None,
        )

    def with_feed_profiles(self, feeds: Mapping[str, Any]) -> EngineBuildConfig:
        """This config with a fixed-shape profile (min = opt = max) for each fed input it has none for.

        Without a profile Polygraphy turns every dynamic dimension into 1, so an engine built for
        a dynamic-batch ONNX would reject feeds of more than one image.
        """
        missing = {
            str(name): InputProfile(*(tuple(int(d) for d in array.shape),) * 3)
            for name, array in feeds.items()
            if name not in self.profiles
        }
        return dataclasses.replace(self, profiles={**self.profiles, **missing}) if missing else self

    def flags_label(self, settings: compat.NetworkSettings | None = None) -> str:
        """The builder settings a results row shows, e.g. `int8 fp16 strongly-typed tf32=off opt=3`
        (what was built, given the version's `settings`; else the configured precision)."""
        typed = self.strongly_typed if settings is None else settings.strongly_typed
        built = self.precision if settings is None else settings.built
        parts = [built, "strongly-typed" if typed else "weakly-typed"]
        parts.append(f"tf32={'on' if self.tf32 else 'off'}")
        if self.builder_optimization_level is not None:
            parts.append(f"opt={self.builder_optimization_level}")
        return " ".join(parts)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the engine. The timing cache only speeds the build up,
        and plugin libraries enter the key through their bytes, not their paths."""
        return {
            "precision": self.precision,
            "profiles": {
                name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                for name, p in sorted(self.profiles.items())
            },
            "workspace_bytes": self.workspace_bytes,
            "strongly_typed": self.strongly_typed,
            "builder_optimization_level": self.builder_optimization_level,
            "tf32": self.tf32,
            "fused_plugin": self.fused_plugin,
        }


def _shape(value: Any) -> Shape:
    return tuple(int(v) for v in value)


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def engine_cache_key(
    onnx_bytes: bytes,
    config: EngineBuildConfig,
    trt_version: str,
    gpu_name: str,
    plugin_digests: Sequence[str] = (),
) -> str:
    """SHA-256 over everything that makes two engines differ; pure so it can be tested anywhere."""
    digest = hashlib.sha256()
    header = {
        "key_version": CACHE_KEY_VERSION,
        "config": config.fingerprint(),
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "plugins": list(plugin_digests),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(b"\0onnx\0")
    digest.update(onnx_bytes)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def polygraphy_profiles(config: EngineBuildConfig) -> list[Any]:
    """The config's shapes as Polygraphy `Profile`s (one profile: dynamic batch only).

    An empty list lets Polygraphy fill a default profile; rtq's stages always pass shapes.
    """
    if not config.profiles:
        return []
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for name, shapes in config.profiles.items():
        profile.add(name, min=shapes.min, opt=shapes.opt, max=shapes.max)
    return [profile]


def plugin_libraries_for(onnx_path: Path, config: EngineBuildConfig) -> tuple[tuple[Path, ...], bool]:
    """(libraries to load, whether the Python plugin is needed) for this ONNX and config."""
    libraries = list(config.plugin_libraries)
    nodes = fused_nodes(onnx_path)
    if not nodes:
        return tuple(libraries), False
    if config.fused_plugin == "python":
        two_input = [name for name, inputs in nodes.items() if inputs > 1]
        if two_input:
            raise UserError(
                f"backend.plugin=python takes the one-input form of {FUSED_OP} only, but node "
                f"{two_input[0]!r} has two inputs (its projections quantize the query with different "
                "scales): set backend.plugin=cpp"
            )
        return tuple(libraries), True
    library = config.fused_plugin_library
    if library is None or not library.is_file():
        folder = PROJECT_ROOT / "plugins" / FUSED_OP
        raise UserError(
            f"the ONNX has {FUSED_OP} nodes but the plugin library {library} is missing: build it with "
            f"`cmake -S {folder} -B {folder}/build && cmake --build {folder}/build`, "
            "or set backend.plugin=python"
        )
    if library not in libraries:
        libraries.append(library)
    return tuple(libraries), False


def layers_json_path(engine_path: Path) -> Path:
    """`model.plan` -> `model.layers.json` (one per engine, so two engines can share a folder)."""
    return engine_path.with_name(engine_path.stem + ".layers.json")


def build_info_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.stem + ".build.json")


def read_build_info(engine_path: Path) -> dict[str, Any] | None:
    path = build_info_path(engine_path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None


def build_engine(
    onnx_path: Path,
    out_path: Path,
    config: EngineBuildConfig,
    cache_dir: Path | None = None,
) -> Path:
    """Build (or reuse) the engine for `onnx_path` at `out_path`; returns `out_path`.

    Reuse: if `out_path` was built with the same cache key it is kept; if `cache_dir` holds
    `<key>.plan` it is copied. Raises StageSkipped without TensorRT or a GPU.
    """
    trt = compat.import_tensorrt()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist: run the export stage first")
    libraries, python_plugin = plugin_libraries_for(onnx_path, config)
    digests = [file_digest(p) for p in libraries]
    if python_plugin:
        digests.append(file_digest(PYTHON_PLUGIN_FILE))
    gpu = compat.gpu_name()
    features = compat.TrtFeatures.from_version(trt.__version__)
    settings = compat.network_settings(features, config.precision, config.strongly_typed)
    key = engine_cache_key(onnx_path.read_bytes(), config, trt.__version__, gpu, digests)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_build_info(out_path)
    if out_path.is_file() and previous is not None and previous.get("cache_key") == key:
        return out_path
    cached = cache_dir / f"{key}.plan" if cache_dir is not None else None
    started = time.perf_counter()
    if cached is not None and cached.is_file() and layers_json_path(cached).is_file():
        shutil.copyfile(cached, out_path)
        shutil.copyfile(layers_json_path(cached), layers_json_path(out_path))
    else:
        if python_plugin:
            register_python_plugin()
        _build(trt, onnx_path, out_path, config, libraries, settings)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out_path, cached)
            shutil.copyfile(layers_json_path(out_path), layers_json_path(cached))
    info = {
        "cache_key": key,
        "onnx": str(onnx_path),
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "precision_built": settings.built,
        "build_flags": config.flags_label(settings),
        "config": config.fingerprint(),
        "plugin_libraries": [str(p) for p in libraries],
        "python_plugin": python_plugin,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_atomic(build_info_path(out_path), json.dumps(info, indent=2).encode())
    return out_path


def builder_config_loader(trt: Any, config: EngineBuildConfig, settings: compat.NetworkSettings) -> Any:
    """Polygraphy's `CreateConfig` for this build: flags, profiles, TF32, timing cache, workspace.

    Plugin libraries are loaded into the registry (before parsing and again before deserializing),
    not embedded with `plugins_to_serialize`: TensorRT documents that for version-compatible engines,
    and an embedded library registered again at deserialization fails ("Cannot register the library
    as plugin creator ... exists already").
    """
    from polygraphy.backend.trt import CreateConfig

    return CreateConfig(
        tf32=config.tf32,
        fp16=settings.fp16_flag or None,
        int8=settings.int8_flag or None,
        profiles=polygraphy_profiles(config) or None,
        load_timing_cache=str(config.timing_cache) if config.timing_cache else None,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: config.workspace_bytes},
        builder_optimization_level=config.builder_optimization_level,
    )


def _build(
    trt: compat.TensorRTModule,
    onnx_path: Path,
    out_path: Path,
    config: EngineBuildConfig,
    libraries: Sequence[Path],
    settings: compat.NetworkSettings,
) -> None:
    """Parse, configure and build with Polygraphy loaders, then write plan + inspector JSON."""
    from polygraphy.backend.trt import EngineBytesFromNetwork, EngineFromBytes, NetworkFromOnnxPath

    source = onnx_path
    if settings.convert_onnx_to_fp16:
        source = compat.convert_onnx_to_fp16(onnx_path, out_path.with_name(out_path.stem + ".fp16.onnx"))

    compat.load_plugin_libraries(trt, libraries)
    network = NetworkFromOnnxPath(str(source), strongly_typed=settings.strongly_typed_flag or None)
    builder_config = builder_config_loader(trt, config, settings)
    timing_cache = str(config.timing_cache) if config.timing_cache else None
    if config.timing_cache is not None:
        config.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    engine_bytes = EngineBytesFromNetwork(network, config=builder_config, save_timing_cache=timing_cache)()
    write_atomic(out_path, bytes(engine_bytes))

    engine = EngineFromBytes(bytes(engine_bytes))()
    layers = compat.engine_information(trt, engine)
    write_atomic(layers_json_path(out_path), json.dumps(layers, indent=2).encode())
