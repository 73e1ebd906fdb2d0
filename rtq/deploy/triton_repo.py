"""Write one model of a Triton model repository from an rtq artifact: `<repo>/<name>/{config.pbtxt, 1/...}`.

The folder is assembled and checked (`triton_check`) in a staging folder inside the repository and
only then moved into place, so a failed run never leaves half a model that a polling server could
pick up. This is the function the pipeline and `python -m rtq.deploy triton` call.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from tritonclient.grpc import model_config_pb2 as mc

from rtq.backends.tensorrt.build import ENGINE_SUFFIXES
from rtq.deploy.graph_io import ModelSignature, engine_signature, onnx_signature
from rtq.deploy.triton_check import model_dir_problems
from rtq.deploy.triton_config import BACKENDS, DeployOptions, build_config, check_model_name, config_text
from rtq.errors import UserError
from rtq.files import write_atomic

log = logging.getLogger("rtq")

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
VERSION = "1"


@dataclass(frozen=True)
class TritonModel:
    """A written model folder and the config in it."""

    model_dir: Path
    config: mc.ModelConfig
    notes: list[str] = field(default_factory=list)


def _signature(model: Path, options: DeployOptions, onnx_path: Path | None) -> ModelSignature:
    if not model.is_file():
        raise UserError(f"model file {str(model)!r} does not exist: pass an ONNX file or a TensorRT engine")
    is_engine = model.suffix in ENGINE_SUFFIXES
    if model.suffix != ".onnx" and not is_engine:
        raise UserError(f"model file {str(model)!r} is neither .onnx nor a TensorRT engine "
                        f"({', '.join(ENGINE_SUFFIXES)}): pass one of those")
    if is_engine and options.backend != "tensorrt":
        raise UserError(f"{str(model)!r} is a TensorRT engine, which only the tensorrt backend serves: "
                        f"pass --backend tensorrt, or the ONNX file for backend {options.backend}")
    if not is_engine and options.backend == "tensorrt":
        raise UserError(f"backend tensorrt serves engines, and {str(model)!r} is an ONNX file: build it "
                        "(stage build) and pass model.plan, or choose --backend onnxruntime, openvino "
                        "or python")
    return engine_signature(model, onnx_path) if is_engine else onnx_signature(model)


def _external_data(model: Path) -> list[Path]:
    """Files an ONNX keeps its large weights in (they travel with it)."""
    graph = onnx.load(str(model), load_external_data=False).graph
    names = {ExternalDataInfo(t).location for t in graph.initializer if uses_external_data(t)} - {""}
    return [model.parent / name for name in sorted(names)]


def _fill_version(version: Path, model: Path, options: DeployOptions) -> None:
    version.mkdir(parents=True)
    backend = BACKENDS[options.backend]
    if options.backend == "python":
        shutil.copyfile(PYTHON_MODEL, version / backend.model_file)
        target = version / BACKENDS["onnxruntime"].model_file
    else:
        target = version / backend.model_file
    shutil.copyfile(model, target)
    if model.suffix == ".onnx":
        for extra in _external_data(model):
            shutil.copyfile(extra, version / extra.name)


def write_triton_model(
    model: str | Path,
    repo: str | Path,
    name: str,
    options: DeployOptions | None = None,
    onnx_path: str | Path | None = None,
) -> TritonModel:
    """Write `repo/name/` serving `model` (ONNX or engine) with `options`; replaces an older folder.

    `onnx_path` is the ONNX an engine was built from, for when neither TensorRT nor the engine's
    `model.build.json` can say what its I/O is.
    """
    options = options or DeployOptions()
    model, repo = Path(model), Path(repo)
    check_model_name(name)
    signature = _signature(model, options, Path(onnx_path) if onnx_path else None)
    config = build_config(signature, name, options)
    if repo.exists() and not repo.is_dir():
        raise UserError(f"repository {str(repo)!r} is a file: pass a folder for --out")
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo))
    try:
        folder = staging / name
        _fill_version(folder / VERSION, model, options)
        write_atomic(folder / "config.pbtxt", config_text(config))
        problems = model_dir_problems(folder)
        if problems:
            raise UserError(f"the Triton config written for {str(model)!r} breaks a server rule: "
                            f"{problems[0]}")
        final = repo / name
        if final.exists():
            shutil.rmtree(final)
        folder.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for note in signature.notes:
        log.info("%s", note)
    log.info("Triton model %s: backend %s, max_batch_size %d -> %s", name, config.backend,
             config.max_batch_size, final)
    return TritonModel(final, config, list(signature.notes))
