"""The reference math of fused_attn_offset_prediction against the Q/DQ computation it replaces."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from plugins.fused_attn_offset_prediction.reference import (
    OP_TYPE,
    FusedAttnOffsetParams,
    Projection,
    fused_attn_offset_prediction,
    fused_attn_offset_prediction_torch,
)


def _projection(rng: np.random.Generator, n: int, k: int, scale: float, zp: int = 0) -> Projection:
    return Projection(weight=rng.integers(-127, 128, (n, k), dtype=np.int8),
                      weight_scale=rng.uniform(1e-3, 1e-2, n).astype(np.float32),
                      input_scale=scale, input_zero_point=zp, bias=rng.normal(size=n).astype(np.float32))


@pytest.fixture
def params() -> FusedAttnOffsetParams:
    rng = np.random.default_rng(0)
    return FusedAttnOffsetParams(_projection(rng, 24, 16, 0.02), _projection(rng, 12, 16, 0.05, zp=3))


def _dequantized_linear(x_q: np.ndarray, p: Projection) -> np.ndarray:
    """What the unfused graph computes: DQ(x) @ DQ(W)^T + b, all in float64."""
    x = (x_q.astype(np.float64) - p.input_zero_point) * p.input_scale
    w = p.weight.astype(np.float64) * p.weight_scale.astype(np.float64)[:, None]
    return x @ w.T + p.bias


def test_matches_dequantized_linear_with_two_inputs(params: FusedAttnOffsetParams) -> None:
    rng = np.random.default_rng(1)
    x0 = rng.integers(-128, 128, (2, 5, 16), dtype=np.int8)
    x1 = rng.integers(-128, 128, (2, 5, 16), dtype=np.int8)
    y0, y1 = fused_attn_offset_prediction(x0, x1, params)
    assert y0.shape == (2, 5, 24) and y1.shape == (2, 5, 12)
    assert y0.dtype == np.float32 and y1.dtype == np.float32
    np.testing.assert_allclose(y0, _dequantized_linear(x0, params.sampling_offsets), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y1, _dequantized_linear(x1, params.attention_weights), rtol=1e-5, atol=1e-5)


def test_one_input_feeds_both(params: FusedAttnOffsetParams) -> None:
    x = np.random.default_rng(2).integers(-128, 128, (1, 7, 16), dtype=np.int8)
    a = fused_attn_offset_prediction(x, None, params)
    b = fused_attn_offset_prediction(x, x, params)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_extreme_values_accumulate_exactly_in_int32() -> None:
    k = 256
    p = Projection(np.full((2, k), -128, np.int8), np.ones(2, np.float32), 1.0, 0, np.zeros(2, np.float32))
    params = FusedAttnOffsetParams(p, p)
    x = np.full((1, 1, k), -128, np.int8)
    y0, _ = fused_attn_offset_prediction(x, None, params)
    assert y0[0, 0, 0] == 128 * 128 * k


def test_rejects_float_input(params: FusedAttnOffsetParams) -> None:
    with pytest.raises(TypeError):
        fused_attn_offset_prediction(np.zeros((1, 2, 16), np.float32), None, params)


def test_torch_form_matches_numpy(params: FusedAttnOffsetParams) -> None:
    torch = pytest.importorskip("torch")
    x0 = np.random.default_rng(3).integers(-128, 128, (3, 4, 16), dtype=np.int8)
    x1 = np.random.default_rng(4).integers(-128, 128, (3, 4, 16), dtype=np.int8)
    ref = fused_attn_offset_prediction(x0, x1, params)
    got = fused_attn_offset_prediction_torch(torch.from_numpy(x0), torch.from_numpy(x1), params)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-6, atol=1e-6)


def test_attributes_round_trip(params: FusedAttnOffsetParams) -> None:
    node = onnx.helper.make_node(OP_TYPE, ["x_q"], ["y0", "y1"], **params.to_attributes())
    attrs = {a.name: a for a in node.attribute}
    assert attrs["weight_0"].type == onnx.AttributeProto.TENSOR
    assert attrs["weight_scale_1"].type == onnx.AttributeProto.FLOATS
    assert attrs["input_zero_point_1"].type == onnx.AttributeProto.INT
    assert onnx.helper.get_attribute_value(attrs["plugin_namespace"]) == b"rtq"
    back = FusedAttnOffsetParams.from_attributes(node)
    for a, b in zip(back.projections, params.projections, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.weight_scale, b.weight_scale)
        np.testing.assert_array_equal(a.bias, b.bias)
        assert (a.input_scale, a.input_zero_point) == (b.input_scale, b.input_zero_point)
    gs_back = FusedAttnOffsetParams.from_gs_attrs(params.to_gs_attrs())
    np.testing.assert_array_equal(gs_back.attention_weights.weight, params.attention_weights.weight)


def test_inconsistent_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        Projection(np.zeros((4, 8), np.int8), np.ones(3, np.float32), 1.0, 0, np.zeros(4, np.float32))
