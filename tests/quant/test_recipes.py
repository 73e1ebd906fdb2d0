"""Recipe YAML -> modelopt quant_cfg, and the user errors for bad globs and bad methods."""

from __future__ import annotations

import copy

import modelopt.torch.quantization as mtq
import pytest
import torch.nn as nn

from rtq.errors import UserError
from rtq.quant.recipes import (
    CALIBRATION_METHODS,
    available_recipes,
    check_module_globs,
    load_recipe,
    recipe_from_dict,
    to_quant_cfg,
)

SHIPPED = ["int8_default", "int8_histogram", "int8_linear_per_axis", "int8_offsets_float",
           "int8_no_backbone", "int8_no_decoder", "int8_attention"]
PRESET_LEN = len(mtq.INT8_DEFAULT_CFG["quant_cfg"])


class CrossAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sampling_offsets = nn.Linear(4, 4)
        self.value_proj = nn.Linear(4, 4)


class Tiny(nn.Module):
    """Module names shaped like RT-DETR's (backbone convs, decoder layers with cross attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([CrossAttn(), CrossAttn()])


def test_every_shipped_recipe_loads() -> None:
    assert set(SHIPPED) <= set(available_recipes())


def test_int8_default_is_modelopt_default() -> None:
    assert to_quant_cfg(load_recipe("int8_default")) == mtq.INT8_DEFAULT_CFG


def test_int8_histogram_maps_conv_inputs_to_histogram() -> None:
    recipe = load_recipe("int8_histogram")
    cfg = to_quant_cfg(recipe)
    assert cfg["algorithm"] is None  # histogram statistics are finished by rtq.quant.calibrate
    assert recipe.histogram_method == "percentile" and recipe.calib.percentile == 99.99
    assert cfg["quant_cfg"][:PRESET_LEN] == mtq.INT8_DEFAULT_CFG["quant_cfg"]
    assert cfg["quant_cfg"][PRESET_LEN:] == [{
        "quantizer_name": "*.*input_quantizer",
        "parent_class": "nn.Conv2d",
        "cfg": {"num_bits": 8, "axis": None, "calibrator": "histogram"},
    }]


def test_int8_linear_per_axis_sets_last_axis_on_linear_inputs() -> None:
    cfg = to_quant_cfg(load_recipe("int8_linear_per_axis"))
    assert cfg["algorithm"] == "max"
    assert cfg["quant_cfg"][PRESET_LEN:] == [{
        "quantizer_name": "*.*input_quantizer", "parent_class": "nn.Linear",
        "cfg": {"num_bits": 8, "axis": -1},
    }]


@pytest.mark.parametrize(("name", "glob"), [
    ("int8_offsets_float", "*sampling_offsets"),
    ("int8_no_backbone", "*backbone"),
    ("int8_no_decoder", "*decoder"),
])
def test_exclusion_recipes_disable_the_subtree(name: str, glob: str) -> None:
    recipe = load_recipe(name)
    cfg = to_quant_cfg(recipe)
    assert cfg["quant_cfg"][:PRESET_LEN] == mtq.INT8_DEFAULT_CFG["quant_cfg"]
    assert cfg["quant_cfg"][PRESET_LEN:] == [{"quantizer_name": f"{glob}.*_quantizer", "enable": False}]
    assert recipe.calib.max_images > 0 and recipe.calib.batch_size > 0


def test_exclusion_glob_disables_real_quantizers() -> None:
    model = mtq.quantize(Tiny(), to_quant_cfg(load_recipe("int8_offsets_float")), forward_loop=None)
    layer = model.decoder.layers[0]
    assert not layer.sampling_offsets.weight_quantizer.is_enabled
    assert not layer.sampling_offsets.input_quantizer.is_enabled
    assert layer.value_proj.weight_quantizer.is_enabled


def test_bad_glob_names_the_glob_and_real_modules() -> None:
    recipe = recipe_from_dict({"name": "typo", "base": "INT8_DEFAULT_CFG", "exclude": ["*samplng_offsets"]})
    with pytest.raises(UserError, match=r"\*samplng_offsets.*decoder\.layers"):
        check_module_globs(recipe, Tiny())


def test_glob_with_parent_class_must_match_that_class() -> None:
    rule = {"modules": "backbone", "parent_class": "nn.Linear", "enable": False}
    with pytest.raises(UserError, match="nn.Linear"):
        check_module_globs(recipe_from_dict({"name": "lin", "quantizers": [rule]}), Tiny())
    decoder_rule = {**rule, "modules": "decoder"}
    check_module_globs(recipe_from_dict({"name": "lin", "quantizers": [decoder_rule]}), Tiny())


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(UserError, match="'kl'.*entropy.*max.*mse.*percentile"):
        recipe_from_dict({"name": "bad", "calib": {"method": "kl"}})


def test_histogram_calibrator_needs_histogram_method() -> None:
    raw = {"name": "h", "quantizers": [{"modules": "*", "quantizer": "input", "calibrator": "histogram"}]}
    with pytest.raises(UserError, match="percentile or entropy"):
        recipe_from_dict({**raw, "calib": {"method": "max"}})
    with pytest.raises(UserError, match="needs at least one"):
        recipe_from_dict({"name": "p", "calib": {"method": "percentile"}})
    with pytest.raises(UserError, match="per-tensor"):
        recipe_from_dict({"name": "h", "calib": {"method": "entropy"}, "quantizers": [
            {"modules": "*", "quantizer": "weight", "calibrator": "histogram", "axis": 0}]})


@pytest.mark.parametrize("raw", [
    {"name": "x", "quantizers": [{"modules": "*", "quantizer": "bias"}]},
    {"name": "x", "quantizers": [{"modules": "*", "parent_class": "nn.NotAModule"}]},
    {"name": "x", "quantizers": [{"quantizer": "input"}]},
    {"name": "x", "typo_key": 1},
    {"name": "x", "base": "NOT_A_PRESET"},
    {"name": "x", "calib": {"batch_size": 0}},
])
def test_malformed_recipes_are_user_errors(raw: dict) -> None:
    with pytest.raises(UserError):
        to_quant_cfg(recipe_from_dict(copy.deepcopy(raw)))


def test_unknown_recipe_name_lists_shipped_ones() -> None:
    with pytest.raises(UserError, match="int8_default"):
        load_recipe("int8_nope")


def test_every_method_has_a_modelopt_route() -> None:
    assert set(CALIBRATION_METHODS) == {"max", "percentile", "entropy", "mse"}


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(8, 2, batch_first=True)


def test_split_attention_recipe_key() -> None:
    recipe = load_recipe("int8_attention")
    assert recipe.split_attention and recipe.base == "INT8_DEFAULT_CFG"
    assert to_quant_cfg(recipe) == to_quant_cfg(load_recipe("int8_default"))  # only the model form differs
    assert not load_recipe("int8_default").split_attention
    with pytest.raises(UserError, match="split_attention"):
        recipe_from_dict({"name": "x", "split_attention": "yes"})


def test_split_attention_globs_are_checked_on_the_split_form() -> None:
    raw = {"name": "x", "base": "INT8_DEFAULT_CFG", "exclude": ["*self_attn.q_proj"]}
    model = WithAttention()
    check_module_globs(recipe_from_dict({**raw, "split_attention": True}), model)
    assert isinstance(model.self_attn, nn.MultiheadAttention)  # checked on a copy
    with pytest.raises(UserError, match="q_proj"):
        check_module_globs(recipe_from_dict(raw), model)
