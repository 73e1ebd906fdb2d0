"""`quantize`: the one torch quantization every caller uses, on a copy unless asked otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtq.errors import UserError
from rtq.quant.quantize import NothingToQuantize, quantize
from rtq.quant.recipes import load_recipe, recipe_from_dict


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(images)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return TwoConvs().eval()


def _feeds(count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"images": rng.uniform(0, 1, size=(2, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def _quantizers(model: nn.Module) -> list[nn.Module]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [m for m in model.modules() if isinstance(m, TensorQuantizer)]


def test_quantizes_a_copy_and_leaves_the_fp32_model_alone() -> None:
    model = _model()
    weight = model.first.weight.detach().clone()
    quantized = quantize(model, load_recipe("int8_default"), _feeds())
    assert quantized is not model
    assert _quantizers(model) == [] and torch.equal(model.first.weight, weight)
    assert len(_quantizers(quantized)) >= 4


def test_in_place_quantizes_the_model_itself() -> None:
    model = _model()
    assert quantize(model, load_recipe("int8_default"), _feeds(), in_place=True) is model
    assert _quantizers(model)


def test_histogram_recipe_is_finished_and_weights_sit_on_the_grid() -> None:
    quantized = quantize(_model(), load_recipe("int8_histogram"), _feeds())
    enabled = [q for q in _quantizers(quantized) if q.is_enabled]
    assert enabled and all(q.amax is not None for q in enabled)  # percentile amax loaded here
    for conv in (quantized.first, quantized.second):
        with torch.no_grad():
            assert torch.equal(conv.weight_quantizer(conv.weight), conv.weight)


def test_everything_excluded_is_nothing_to_quantize() -> None:
    recipe = recipe_from_dict({"name": "none", "base": "INT8_DEFAULT_CFG", "exclude": ["*first", "*second"]})
    with pytest.raises(NothingToQuantize, match="no weight quantizer"):
        quantize(_model(), recipe, _feeds())


def test_recipe_glob_matching_nothing_is_a_user_error() -> None:
    recipe = recipe_from_dict({"name": "typo", "base": "INT8_DEFAULT_CFG", "exclude": ["*thrid"]})
    with pytest.raises(UserError, match=r"'\*thrid'"):
        quantize(_model(), recipe, _feeds())


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 1)
        self.self_attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images).flatten(2).transpose(1, 2)
        return self.self_attn(tokens, tokens, tokens, need_weights=False)[0]


def test_split_attention_quantizes_the_attention_projections() -> None:
    from rtq.models.attention import LinearMultiheadAttention

    torch.manual_seed(0)
    model = SelfAttention().eval()
    plain = quantize(model, load_recipe("int8_default"), _feeds())
    split = quantize(model, load_recipe("int8_attention"), _feeds())
    assert isinstance(model.self_attn, nn.MultiheadAttention)  # the FP32 model keeps its form
    assert isinstance(plain.self_attn, nn.MultiheadAttention)
    assert isinstance(split.self_attn, LinearMultiheadAttention)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        proj = split.self_attn.get_submodule(name)
        for quantizer in (proj.input_quantizer, proj.weight_quantizer):
            assert quantizer.is_enabled and quantizer.amax is not None, name
    images = torch.from_numpy(_feeds(1)[0]["images"])
    with torch.no_grad():
        assert (split(images) - model(images)).abs().max() < 0.1  # INT8 noise, not a different network


def test_split_attention_model_restores_onto_the_prepared_fp32_model(tmp_path: Path) -> None:
    """What the quantize stage's cache does: `mto.restore` needs the split form to restore into."""
    import copy

    import modelopt.torch.opt as mto

    from rtq.quant.recipes import prepare_model

    torch.manual_seed(0)
    model = SelfAttention().eval()
    recipe = load_recipe("int8_attention")
    split = quantize(model, recipe, _feeds())
    mto.save(split, str(tmp_path / "state.pth"))
    restored = mto.restore(prepare_model(copy.deepcopy(model), recipe), str(tmp_path / "state.pth")).eval()
    images = torch.from_numpy(_feeds(1)[0]["images"])
    with torch.no_grad():
        assert torch.equal(restored(images), split(images))
