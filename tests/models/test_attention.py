"""`LinearMultiheadAttention`: nn.MultiheadAttention's numbers from four plain Linear projections."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtq.models.attention import LinearMultiheadAttention, split_attention
from rtq.paths import SHARED_DIR

FIXTURE = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity"


def _pair(batch_first: bool, bias: bool = True) -> tuple[nn.MultiheadAttention, LinearMultiheadAttention]:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, dropout=0.1, bias=bias, batch_first=batch_first).eval()
    with torch.no_grad():
        if bias:  # torch initialises the biases to zero: make them count
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha, LinearMultiheadAttention.from_torch(mha)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_without_masks(batch_first: bool, bias: bool) -> None:
    mha, linear = _pair(batch_first, bias)
    q, k, v = (torch.randn(2, 5, 16) for _ in range(3))
    if not batch_first:
        q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    with torch.no_grad():
        want, _ = mha(q, k, value=v, need_weights=False)
        got, weights = linear(q, k, value=v, need_weights=False)
    assert weights is None and not linear.training  # eval kept, so dropout is off
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_matches_torch_with_attention_and_padding_masks(mask_dtype: torch.dtype) -> None:
    mha, linear = _pair(batch_first=True)
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    attn_mask = torch.rand(5, 7) > 0.7
    attn_mask[:, 0] = False  # every query keeps a key
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    if mask_dtype != torch.bool:
        attn_mask = torch.zeros(5, 7).masked_fill(attn_mask, float("-inf"))
        padding = torch.zeros(2, 7).masked_fill(padding, float("-inf"))
    per_head = attn_mask.repeat(2 * 4, 1, 1)  # [B * H, L, S]
    with torch.no_grad():
        for mask in (attn_mask, per_head):
            want, _ = mha(q, k, k, key_padding_mask=padding, need_weights=False, attn_mask=mask)
            got, _ = linear(q, k, k, key_padding_mask=padding, attn_mask=mask)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_refuses_what_it_cannot_reproduce() -> None:
    _, linear = _pair(batch_first=True)
    x = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="need_weights"):
        linear(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="add_bias_kv"):
        LinearMultiheadAttention.from_torch(nn.MultiheadAttention(16, 4, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_bias_kv"):
        LinearMultiheadAttention.from_torch(nn.MultiheadAttention(16, 4, kdim=8, vdim=8))


def test_split_attention_swaps_nested_modules_and_keeps_the_rest() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4)}))
    assert split_attention(model) == 1
    assert isinstance(model[1]["attn"], LinearMultiheadAttention) and isinstance(model[0], nn.Linear)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert split_attention(model) == 0


@pytest.mark.skipif(not (FIXTURE / "checkpoint.pth").is_file(), reason=f"parity fixture not at {FIXTURE}")
def test_split_rtdetr_r18vd_matches_the_original_on_a_real_image() -> None:
    from rtq.models import build_model

    model = build_model("rtdetrv2_r18vd", FIXTURE / "checkpoint.pth")
    keys = set(model.state_dict())
    split = copy.deepcopy(model)
    assert split_attention(split) == 4  # AIFI encoder layer + 3 decoder layers
    assert set(model.state_dict()) == keys  # the original (and its checkpoint layout) is untouched
    images = torch.from_numpy(np.load(FIXTURE / "images.npy"))[:1]
    with torch.no_grad():
        want, got = model(images), split(images)
    for name in ("pred_logits", "pred_boxes"):
        assert (got[name] - want[name]).abs().max().item() < 5e-5, name
