"""Decoder building blocks: anchors, inverse sigmoid, both deformable sampling methods."""

from __future__ import annotations

import torch

from rtq.models.decoder import MSDeformableAttention, generate_anchors, inverse_sigmoid, sample_values


def test_anchors_for_640_have_8084_valid_positions() -> None:
    anchors, valid = generate_anchors([(80, 80), (40, 40), (20, 20)])
    assert anchors.shape == (1, 8400, 4) and valid.shape == (1, 8400, 1)
    assert int(valid.sum()) == 8084
    assert torch.isinf(anchors[~valid.expand_as(anchors)]).all()
    first = torch.sigmoid(anchors[0, 80 * 5 + 7])  # level 0, row 5, column 7
    torch.testing.assert_close(first, torch.tensor([7.5 / 80, 5.5 / 80, 0.05, 0.05]))


def test_inverse_sigmoid_clips() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0])
    out = inverse_sigmoid(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[2], torch.tensor(0.0))
    torch.testing.assert_close(out[0], out[1])


def _value_and_cells() -> tuple[torch.Tensor, list[tuple[int, int]]]:
    torch.manual_seed(0)
    shapes = [(4, 4), (2, 2)]
    return torch.randn(2, 16 + 4, 8), shapes  # B=2, C=8 -> 2 heads of 4 channels


def test_default_samples_bilinearly_at_pixel_centres() -> None:
    """With align_corners=False, (i + 0.5) / W is the centre of cell i: bilinear returns its value."""
    value, shapes = _value_and_cells()
    heads, points = 2, [1, 1]
    loc = torch.tensor(
        [[1.5 / 4, 2.5 / 4], [0.5 / 2, 1.0 / 2]]
    )  # level 0 cell (x1, y2); level 1 between rows
    locations = loc.reshape(1, 1, 1, 2, 2).expand(2, 3, heads, 2, 2).contiguous()
    weights = torch.tensor([0.25, 0.75]).expand(2, 3, heads, 2).contiguous()
    out = sample_values(value, shapes, locations, weights, points, heads, "default")
    level1 = 0.5 * value[:, 16 + 0 * 2 + 0] + 0.5 * value[:, 16 + 1 * 2 + 0]
    expected = 0.25 * value[:, 2 * 4 + 1] + 0.75 * level1
    torch.testing.assert_close(out[:, 0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[:, 2], expected, atol=1e-6, rtol=1e-5)


def test_discrete_takes_cell_of_loc_times_size_plus_half_and_clamps() -> None:
    value, shapes = _value_and_cells()
    heads, points = 2, [1, 1]
    # level 0: x = 0.3 * 4 + 0.5 = 1.7 -> column 1; y = 1.2 -> row 5, clamped to 3.
    # level 1: x = -0.3 -> clamped to 0; y = 0.8 * 2 + 0.5 = 2.1 -> row 2, clamped to 1.
    loc = torch.tensor([[0.3, 1.2], [-0.3, 0.8]])
    locations = loc.reshape(1, 1, 1, 2, 2).expand(2, 1, heads, 2, 2).contiguous()
    weights = torch.tensor([0.5, 0.5]).expand(2, 1, heads, 2).contiguous()
    out = sample_values(value, shapes, locations, weights, points, heads, "discrete")
    expected = 0.5 * value[:, 3 * 4 + 1] + 0.5 * value[:, 16 + 1 * 2 + 0]
    torch.testing.assert_close(out[:, 0], expected)


def test_attention_keeps_batch_independent() -> None:
    torch.manual_seed(0)
    attn = MSDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=2).eval()
    with torch.no_grad():
        attn.attention_weights.weight.normal_(0, 0.1)
        attn.sampling_offsets.weight.normal_(0, 0.1)
    query = torch.randn(3, 5, 32)
    ref = torch.rand(3, 5, 1, 4) * 0.5 + 0.25
    value = torch.randn(3, 16 + 4, 32)
    with torch.no_grad():
        batched = attn(query, ref, value, [(4, 4), (2, 2)])
        single = attn(query[1:2], ref[1:2], value[1:2], [(4, 4), (2, 2)])
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=1e-5)
