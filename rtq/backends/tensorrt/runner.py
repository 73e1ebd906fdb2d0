"""A Polygraphy `TrtRunner` over a built engine, so compare / evaluate / FPS need no TRT glue.

Timing: Polygraphy's `TrtRunner.last_inference_time()` is host wall time around one
`infer()` call (input copy, enqueue, synchronize, output copy). rtq's FPS stage uses that figure
for every backend so the numbers are comparable; it includes host<->device copies, so it is
an end-to-end model time, not pure GPU time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtq.backends.tensorrt import compat
from rtq.backends.tensorrt.build import read_build_info
from rtq.backends.tensorrt.python_plugin import register_python_plugin
from rtq.errors import UserError


def engine_plugin_libraries(engine_path: Path) -> list[Path]:
    """Plugin libraries recorded at build time in `<stem>.build.json` (empty if none)."""
    info = read_build_info(Path(engine_path)) or {}
    return [Path(p) for p in info.get("plugin_libraries", [])]


def make_trt_runner(
    engine_path: Path,
    plugin_libraries: Sequence[Path] | None = None,
    name: str | None = None,
) -> Any:
    """Return Polygraphy's `TrtRunner` for `engine_path` (use it as a context manager).

    Plugins are loaded before the engine is deserialized: the ones given, or else the ones
    the build recorded. Raises StageSkipped without TensorRT.
    """
    trt = compat.import_tensorrt()
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise UserError(f"engine {engine_path} does not exist: run the build stage first")
    if plugin_libraries is None:
        plugin_libraries = engine_plugin_libraries(engine_path)
    libraries = list(plugin_libraries)
    compat.load_plugin_libraries(trt, libraries)
    if (read_build_info(engine_path) or {}).get("python_plugin"):
        register_python_plugin()

    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    return TrtRunner(EngineFromPath(str(engine_path)), name=name or f"trt-{engine_path.stem}")
