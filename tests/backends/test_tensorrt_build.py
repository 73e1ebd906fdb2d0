"""Engine build settings: cache key, config mapping, Polygraphy profile, plugin selection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from rtq.backends.tensorrt import build as build_module
from rtq.backends.tensorrt import compat
from rtq.backends.tensorrt.build import (
    EngineBuildConfig,
    InputProfile,
    build_engine,
    engine_cache_key,
    layers_json_path,
    plugin_libraries_for,
    polygraphy_profiles,
)
from rtq.errors import StageSkipped, UserError

ROOT = Path(__file__).resolve().parents[2]
PROFILE = {"images": InputProfile((1, 3, 640, 640), (4, 3, 640, 640), (16, 3, 640, 640))}
BASE = EngineBuildConfig(precision="int8_qdq", profiles=PROFILE)
KEY_ARGS = (b"onnx-bytes", BASE, "10.13.0.35", "NVIDIA H100 80GB HBM3")


def test_cache_key_is_stable() -> None:
    assert engine_cache_key(*KEY_ARGS) == engine_cache_key(*KEY_ARGS)
    same = EngineBuildConfig(precision="int8_qdq", profiles=dict(PROFILE))
    assert engine_cache_key(b"onnx-bytes", same, *KEY_ARGS[2:]) == engine_cache_key(*KEY_ARGS)


@pytest.mark.parametrize(
    "change",
    [
        {"precision": "fp16"},
        {"profiles": {"images": InputProfile((1, 3, 640, 640), (8, 3, 640, 640), (16, 3, 640, 640))}},
        {"workspace_bytes": 1 << 30},
        {"strongly_typed": False},
        {"builder_optimization_level": 5},
        {"fused_plugin": "python"},
    ],
)
def test_cache_key_changes_with_config(change: dict[str, object]) -> None:
    other = dataclasses.replace(BASE, **change)  # type: ignore[arg-type]
    assert engine_cache_key(b"onnx-bytes", other, *KEY_ARGS[2:]) != engine_cache_key(*KEY_ARGS)


def test_cache_key_changes_with_inputs() -> None:
    key = engine_cache_key(*KEY_ARGS)
    assert engine_cache_key(b"onnx-bytes!", *KEY_ARGS[1:]) != key
    assert engine_cache_key(b"onnx-bytes", BASE, "11.0.0", KEY_ARGS[3]) != key
    assert engine_cache_key(b"onnx-bytes", BASE, KEY_ARGS[2], "NVIDIA L4") != key
    assert engine_cache_key(*KEY_ARGS, plugin_digests=["abc"]) != key


def test_timing_cache_does_not_change_key() -> None:
    with_cache = dataclasses.replace(BASE, timing_cache=Path("/tmp/t.cache"))
    assert engine_cache_key(b"onnx-bytes", with_cache, *KEY_ARGS[2:]) == engine_cache_key(*KEY_ARGS)


def test_config_from_backend_yaml() -> None:
    cfg = yaml.safe_load((ROOT / "conf/backend/tensorrt.yaml").read_text())
    config = EngineBuildConfig.from_mapping(cfg, base_dir=ROOT)
    assert config.precision == cfg["precision"]
    assert config.workspace_bytes == cfg["workspace_mib"] << 20
    assert config.profiles["images"].max == tuple(cfg["profile"]["images"]["max"])
    assert config.fused_plugin == cfg["plugin"]
    assert config.fused_plugin_library == ROOT / cfg["plugin_library"]
    assert config.timing_cache is not None and config.timing_cache.is_absolute()


def test_polygraphy_profile_mapping() -> None:
    config = EngineBuildConfig.from_mapping(
        {"profile": {"images": {"min": [1, 3, 640, 640], "opt": [2, 3, 640, 640], "max": [8, 3, 640, 640]},
                     "orig_target_sizes": {"min": [1, 2], "opt": [2, 2], "max": [8, 2]}}}
    )
    (profile,) = polygraphy_profiles(config)
    assert set(profile.keys()) == {"images", "orig_target_sizes"}
    assert tuple(profile["images"].min) == (1, 3, 640, 640)
    assert tuple(profile["images"].opt) == (2, 3, 640, 640)
    assert tuple(profile["orig_target_sizes"].max) == (8, 2)
    assert polygraphy_profiles(EngineBuildConfig()) == []


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"precision": "int4"}, "backend.precision"),
        ({"plugin": "rust"}, "backend.plugin"),
        ({"workspace_mib": 0}, "workspace"),
        ({"builder_optimization_level": 9}, "builder_optimization_level"),
        ({"profile": {"images": {"min": [1, 3], "opt": [4, 3]}}}, "backend.profile.images"),
        ({"profile": {"images": {"min": [4, 3], "opt": [2, 3], "max": [8, 3]}}}, "min <= opt <= max"),
        ({"profile": {"images": {"min": [1, 3], "opt": [2, 3], "max": [8, 3, 1]}}}, "rank"),
    ],
)
def test_bad_config_is_a_user_error(cfg: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        EngineBuildConfig.from_mapping(cfg)


def test_layers_json_beside_engine() -> None:
    assert layers_json_path(Path("run/model.plan")) == Path("run/model.layers.json")


def _save_model(path: Path, op_type: str) -> None:
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    onnx.save(helper.make_model(graph), str(path))


def test_plugin_selection(tmp_path: Path) -> None:
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    _save_model(plain, "Relu")
    _save_model(fused, "fused_attn_offset_prediction")
    library = tmp_path / "libfused.so"
    cpp = EngineBuildConfig(fused_plugin="cpp", fused_plugin_library=library)
    assert plugin_libraries_for(plain, cpp) == ((), False)
    with pytest.raises(UserError, match="cmake"):
        plugin_libraries_for(fused, cpp)
    library.write_bytes(b"\x7fELF")
    assert plugin_libraries_for(fused, cpp) == ((library,), False)
    python = EngineBuildConfig(fused_plugin="python")
    assert plugin_libraries_for(fused, python) == ((), True)


def _tiny_model(path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["images", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_build_engine_without_tensorrt_is_skipped(tmp_path: Path) -> None:
    if compat.tensorrt_available():
        pytest.skip("TensorRT is installed: covered by test_build_engine_tiny")
    _tiny_model(tmp_path / "m.onnx")
    with pytest.raises(StageSkipped, match="^TensorRT not installed$"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", EngineBuildConfig(precision="fp32"))


def test_build_engine_tiny(tmp_path: Path) -> None:
    if not compat.tensorrt_available():
        pytest.skip("TensorRT not installed")
    try:
        compat.gpu_name()
    except StageSkipped as err:
        pytest.skip(str(err))
    _tiny_model(tmp_path / "m.onnx")
    config = EngineBuildConfig(
        precision="fp32",
        profiles={"images": InputProfile((1, 4), (2, 4), (4, 4))},
        timing_cache=tmp_path / "timing.cache",
    )
    plan = build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", config)
    assert plan.stat().st_size > 0
    from rtq.backends.tensorrt.inspect import load_layers

    assert load_layers(layers_json_path(plan))
    mtime = plan.stat().st_mtime_ns
    assert build_engine(tmp_path / "m.onnx", plan, config) == plan
    assert plan.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_python_plugin_refuses_the_two_input_form(tmp_path: Path) -> None:
    """The `tensorrt.plugin` signature has one input; a two-input fused node needs the C++ plugin."""
    fused = tmp_path / "fused2.onnx"
    node = helper.make_node("fused_attn_offset_prediction", ["a", "b"], ["y0", "y1"], name="layer0/fused")
    graph = helper.make_graph(
        [node],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.INT8, ["N", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("y0", "y1")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fused))
    with pytest.raises(UserError, match="'layer0/fused' has two inputs.*backend.plugin=cpp"):
        plugin_libraries_for(fused, EngineBuildConfig(fused_plugin="python"))


def test_feeds_without_a_profile_get_a_fixed_one() -> None:
    """Polygraphy would fill a missing profile with 1 in every dynamic dimension."""
    feeds = {"images": np.zeros((3, 3, 64, 64), np.float32), "orig_target_sizes": np.zeros((3, 2), np.int64)}
    config = EngineBuildConfig().with_feed_profiles(feeds)
    assert config.profiles["images"] == InputProfile((3, 3, 64, 64), (3, 3, 64, 64), (3, 3, 64, 64))
    assert config.profiles["orig_target_sizes"].max == (3, 2)
    assert BASE.with_feed_profiles({"images": feeds["images"]}) is BASE  # a given profile wins


def test_tf32_is_a_recorded_setting() -> None:
    assert EngineBuildConfig.from_mapping({"tf32": True}).tf32
    assert EngineBuildConfig.from_mapping({}).tf32 is False
    cfg = yaml.safe_load((ROOT / "conf" / "backend" / "tensorrt.yaml").read_text())
    assert cfg["tf32"] is False
    tf32 = dataclasses.replace(BASE, tf32=True)
    assert tf32.fingerprint()["tf32"] is True
    assert engine_cache_key(b"onnx-bytes", tf32, *KEY_ARGS[2:]) != engine_cache_key(*KEY_ARGS)


def test_builder_config_passes_tf32_and_embeds_no_plugin_library() -> None:
    """Polygraphy's CreateConfig gets TF32 as configured; no PostprocessConfig sets
    `plugins_to_serialize` (for version-compatible engines only; re-registering fails)."""
    from types import SimpleNamespace

    from polygraphy.backend.trt import CreateConfig

    trt = SimpleNamespace(
        ProfilingVerbosity=SimpleNamespace(DETAILED="detailed"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="ws"),
    )
    settings = compat.network_settings(compat.TrtFeatures.from_version("10.13.0"), "int8_qdq")
    for tf32 in (False, True):
        config = dataclasses.replace(BASE, tf32=tf32, plugin_libraries=(Path("/x/libplugin.so"),))
        loader = build_module.builder_config_loader(trt, config, settings)
        assert type(loader) is CreateConfig and loader.tf32 is tf32
        assert loader.memory_pool_limits == {"ws": BASE.workspace_bytes}


def test_flags_label_names_what_the_results_row_shows() -> None:
    assert BASE.flags_label() == "int8_qdq strongly-typed tf32=off"
    tuned = dataclasses.replace(BASE, tf32=True, strongly_typed=False, builder_optimization_level=5)
    assert tuned.flags_label() == "int8_qdq weakly-typed tf32=on opt=5"


def test_installed_polygraphy_guards_removed_layer_attributes() -> None:
    """Polygraphy < 0.53.6 reads `layer.precision_is_set` unguarded; TensorRT 11 removed that attribute."""
    from importlib.metadata import version

    installed = tuple(int(part) for part in version("polygraphy").split(".")[:3])
    assert installed >= (0, 53, 6)
