"""The rules `tritonserver` enforces on a model folder that can be checked without the server.

They follow the server's own validation (core's model_config_utils: `ValidateModelConfig`,
`ValidateIOShape`, `ValidateInstanceGroup`, the platform/backend pairs of `AutoCompleteBackendFields`)
and the backends' needs (the model file in a numeric version folder, OpenVINO on CPU only, TensorRT
on GPU only), plus one the backends check only when loading: the config's I/O must be the graph's.
Each problem is one sentence naming the field; `check_model_dir` turns the first into a `UserError`.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from rtq.deploy.graph_io import ModelSignature, onnx_signature
from rtq.deploy.triton_config import BACKENDS, PARAM_MODEL_FILE, parse_config, triton_dims, triton_type
from rtq.errors import UserError

_PLATFORM_OF = {b.backend: b.platform for b in BACKENDS.values() if b.platform}
_DEFAULT_FILE = {b.backend: b.loads_by_default for b in BACKENDS.values()}
WILDCARD = -1


def _io_problems(kind: str, tensors: list[mc.ModelInput] | list[mc.ModelOutput], max_batch: int) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for io in tensors:
        if not io.name:
            problems.append(f"a model {kind} must specify 'name'")
            continue
        if io.name in seen:
            problems.append(f"model {kind} '{io.name}' is listed twice")
        seen.add(io.name)
        if io.data_type == mc.TYPE_INVALID:
            problems.append(f"model {kind} '{io.name}' must specify 'data_type'")
        if not io.dims:
            problems.append(f"model {kind} '{io.name}' must specify 'dims'")
        if any(d < 1 and d != WILDCARD for d in io.dims):
            problems.append(f"model {kind} '{io.name}' dims {list(io.dims)}: each dimension must be >= 1, "
                            "or -1 for a variable-size dimension")
        if io.HasField("reshape") and not io.reshape.shape and max_batch == 0:
            problems.append(f"model {kind} '{io.name}' cannot have an empty reshape in a non-batching model")
    return problems


def config_problems(config: mc.ModelConfig) -> list[str]:
    """What the server would refuse in this config, checked on the message alone."""
    problems: list[str] = []
    if not config.name:
        problems.append("the config must specify 'name'")
    if not config.backend:
        problems.append(f"the config must specify 'backend' (one of {', '.join(_PLATFORM_OF) or ''}, ...)")
    expected_platform = _PLATFORM_OF.get(config.backend)
    if config.platform and expected_platform is not None and config.platform != expected_platform:
        problems.append(f"platform '{config.platform}' does not go with backend '{config.backend}' "
                        f"(expected '{expected_platform}')")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} must be non-negative")
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if not 0 < size <= config.max_batch_size:
                problems.append(f"dynamic batching preferred size {size} must be positive and "
                                f"<= max_batch_size {config.max_batch_size}")
    if not config.input:
        problems.append("the config lists no input")
    if not config.output:
        problems.append("the config lists no output")
    problems += _io_problems("input", list(config.input), config.max_batch_size)
    problems += _io_problems("output", list(config.output), config.max_batch_size)
    for group in config.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        if group.count < 0:
            problems.append(f"instance group count {group.count} must be positive")
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            problems.append("instance group of kind KIND_CPU must not list gpus")
        if config.backend == "openvino" and group.kind == mc.ModelInstanceGroup.KIND_GPU:
            problems.append("the openvino backend runs on CPU only: use instance kind KIND_CPU")
        if config.backend == "tensorrt" and group.kind not in (mc.ModelInstanceGroup.KIND_GPU,
                                                               mc.ModelInstanceGroup.KIND_AUTO):
            problems.append(f"a TensorRT engine runs on a GPU: instance kind {kind} must be KIND_GPU")
        if group.profile and config.platform != "tensorrt_plan":
            problems.append("instance group 'profile' is only supported for TensorRT models")
    return problems


def _graph_problems(config: mc.ModelConfig, graph: ModelSignature) -> list[str]:
    """Config I/O against the graph's, as the ONNX Runtime and OpenVINO backends check on load."""
    problems: list[str] = []
    strip = config.max_batch_size > 0
    sides = (("input", config.input, graph.inputs), ("output", config.output, graph.outputs))
    for kind, listed, specs in sides:
        by_name = {s.name: s for s in specs}
        for io in listed:
            spec = by_name.get(io.name)
            if spec is None:
                problems.append(f"model {kind} '{io.name}' is not a graph {kind} "
                                f"(graph has {sorted(by_name)})")
                continue
            graph_type = triton_type(spec.dtype, spec.name)
            if io.data_type != graph_type:
                problems.append(f"model {kind} '{io.name}' is {mc.DataType.Name(io.data_type)} but the graph "
                                f"says {mc.DataType.Name(graph_type)}")
            if strip and (not spec.dims or not isinstance(spec.dims[0], str)):
                problems.append(f"model {kind} '{io.name}' has no symbolic batch dimension in the graph, "
                                "so max_batch_size must be 0")
            shown = triton_dims(spec.dims[1:] if strip else spec.dims)
            fits = len(shown) == len(io.dims) and all(
                c == WILDCARD or g == WILDCARD or c == g for c, g in zip(io.dims, shown, strict=True))
            if not fits:
                problems.append(f"model {kind} '{io.name}' dims {list(io.dims)} do not match "
                                f"the graph's {shown}")
        if kind == "input" and (missing := sorted(set(by_name) - {io.name for io in listed})):
            problems.append(f"graph inputs {missing} are missing from the config")
    return problems


def model_dir_problems(model_dir: Path) -> list[str]:
    """Every offline problem of one model folder (config.pbtxt + numeric version folders)."""
    return _checked(model_dir)[1]


def _checked(model_dir: Path) -> tuple[mc.ModelConfig | None, list[str]]:
    """The folder's parsed config (None when missing) and its problems."""
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        return None, [f"{config_path} is missing"]
    config = parse_config(config_path.read_text(), str(config_path))
    problems = config_problems(config)
    if config.name and config.name != model_dir.name:
        problems.append(f"config name '{config.name}' differs from its folder name '{model_dir.name}'")
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        problems.append(f"{model_dir} has no numeric version folder (such as 1/)")
    filename = config.default_model_filename or _DEFAULT_FILE.get(config.backend, "")
    for version in versions:
        if filename and not (version / filename).exists():
            problems.append(f"{version / filename} is missing (the {config.backend} backend loads that file)")
    graph_file = filename if filename.endswith(".onnx") else ""
    if config.backend == "python" and PARAM_MODEL_FILE in config.parameters:
        graph_file = config.parameters[PARAM_MODEL_FILE].string_value
    for version in versions:
        if graph_file and (version / graph_file).is_file():
            problems += _graph_problems(config, onnx_signature(version / graph_file))
    return config, problems


def check_model_dir(model_dir: str | Path) -> mc.ModelConfig:
    """Parse and check one model folder; the first problem becomes a one-line `UserError`."""
    model_dir = Path(model_dir)
    config, problems = _checked(model_dir)
    if problems or config is None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"Triton model {str(model_dir)!r}: {problems[0]}{more}; fix it or regenerate the "
                        "folder with `python -m rtq.deploy triton`")
    return config
