"""HybridEncoder: RepVGG fusion is exact, sin-cos layout quirk, output shapes."""

from __future__ import annotations

import torch
from torch import nn

from rtq.models.hybrid_encoder import HybridEncoder, RepVggBlock, build_2d_sincos_position_embedding


def _randomise_norms(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_repvgg_fusion_is_one_conv_with_the_same_output() -> None:
    torch.manual_seed(0)
    block = RepVggBlock(16, 16, act="silu").eval()
    _randomise_norms(block)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        before = block(x)
        block.convert_to_deploy()
        after = block(x)
    assert isinstance(block.conv, nn.Conv2d) and block.conv.kernel_size == (3, 3)
    assert not hasattr(block, "conv1") and not hasattr(block, "conv2")
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_sincos_embedding_rows_then_columns() -> None:
    """First half encodes p // h (the row on square maps), second half p % h (the column)."""
    pos = build_2d_sincos_position_embedding(4, 4, embed_dim=8)[0]
    p = 2 * 4 + 3  # row 2, column 3
    # pos_dim = 2 and omega[0] = 1, so component 0 is sin(row) and component 4 is sin(column).
    assert torch.isclose(pos[p, 0], torch.sin(torch.tensor(2.0)))
    assert torch.isclose(pos[p, 4], torch.sin(torch.tensor(3.0)))
    assert pos.shape == (16, 8)


def test_encoder_outputs_three_levels_of_hidden_dim() -> None:
    torch.manual_seed(0)
    enc = HybridEncoder(
        in_channels=(32, 64, 128),
        hidden_dim=64,
        dim_feedforward=128,
        expansion=0.5,
        eval_spatial_size=(128, 128),
    ).eval()
    assert "pos_embed2" not in enc.state_dict()  # non-persistent, like the official module
    feats = [torch.randn(1, 32, 16, 16), torch.randn(1, 64, 8, 8), torch.randn(1, 128, 4, 4)]
    with torch.no_grad():
        outs = enc(feats)
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4)]
    # The precomputed embedding equals the one built on the fly for training.
    torch.testing.assert_close(enc.pos_embed2, build_2d_sincos_position_embedding(4, 4, 64))
