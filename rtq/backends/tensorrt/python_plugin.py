"""The fused op's plugins from the engine build's side: which ONNX nodes need one, and the
`tensorrt.plugin` (Python) form loaded once per process.

`tensorrt.plugin` keeps one registry per process and refuses a second definition of an op
(`tensorrt/plugin/_lib.py`: "... already has a defintion ..."), while a build and a run (or every
candidate of the localiser) ask for the plugin in the same process; so plugins/<op>/trt_plugin.py
is loaded once, under its package name, and its guard also asks the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rtq.errors import UserError

FUSED_OP = "fused_attn_offset_prediction"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
PYTHON_PLUGIN_FILE = PROJECT_ROOT / "plugins" / FUSED_OP / "trt_plugin.py"
PYTHON_PLUGIN_MODULE = f"plugins.{FUSED_OP}.trt_plugin"


def fused_nodes(onnx_path: Path) -> dict[str, int]:
    """The fused nodes of the main graph and how many inputs each reads: one (`x_q`), or two
    (`x_q0`, `x_q1`), which only the C++ plugin takes. Weights are not loaded."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {n.name: len([i for i in n.input if i]) for n in model.graph.node if n.op_type == FUSED_OP}


def python_plugin_module() -> Any:
    """plugins/<op>/trt_plugin.py as one module per process (under its package name), so its
    registration guard sees earlier registrations: `tensorrt.plugin` refuses a second one."""
    import importlib.util

    module = sys.modules.get(PYTHON_PLUGIN_MODULE)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(PYTHON_PLUGIN_MODULE, PYTHON_PLUGIN_FILE)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot load {PYTHON_PLUGIN_FILE}: is the plugins/ folder present?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PYTHON_PLUGIN_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PYTHON_PLUGIN_MODULE]
        raise
    return module


def register_python_plugin() -> None:
    """Register the `tensorrt.plugin` form of the fused op (needed where engines build or run)."""
    if not python_plugin_module().register_tensorrt_plugin():
        raise UserError(
            "backend.plugin=python needs the tensorrt.plugin module (TensorRT >= 10.6): "
            "upgrade TensorRT or set backend.plugin=cpp"
        )
