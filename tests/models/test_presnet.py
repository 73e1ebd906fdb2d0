"""PResNet-vd structure: stage outputs, variant-d shortcuts, frozen norm behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtq.models.presnet import ConvNormLayer, FrozenBatchNorm2d, PResNet, freeze_batch_norm


@pytest.mark.parametrize(("depth", "channels"), [(18, [128, 256, 512]), (50, [512, 1024, 2048])])
def test_returns_stages_1_to_3_at_strides_8_16_32(depth: int, channels: list[int]) -> None:
    model = PResNet(depth).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == channels == model.out_channels
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 12), (4, 6), (2, 3)]
    assert model.out_strides == [8, 16, 32]


def test_variant_d_shortcuts() -> None:
    modules = dict(PResNet(18).named_modules())
    # Stride-1 stage: a plain 1x1 ConvNorm; stride-2 stages: average pool then 1x1 ConvNorm.
    assert isinstance(modules["res_layers.0.blocks.0.short"], ConvNormLayer)
    pool = modules["res_layers.1.blocks.0.short.pool"]
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode
    assert isinstance(modules["res_layers.1.blocks.0.short.conv"], ConvNormLayer)
    assert "res_layers.1.blocks.1.short" not in modules  # later blocks use the identity


def test_frozen_norm_matches_batchnorm_in_eval() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8).eval()
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(8)
    state = bn.state_dict()
    frozen.load_state_dict(state)  # `num_batches_tracked` is accepted and dropped
    assert "num_batches_tracked" not in frozen.state_dict()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x), atol=1e-5, rtol=1e-5)


def test_freeze_norm_replaces_every_batchnorm() -> None:
    model = freeze_batch_norm(PResNet(18))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())


def test_unknown_depth_rejected() -> None:
    with pytest.raises(ValueError, match="depth 152"):
        PResNet(152)
