"""PResNet backbone (ResNet variant d) of RT-DETRv2, laid out so official state-dict keys load as is.

Attribute names and registration order follow the official module tree: checkpoints load strictly
and ONNX node names (derived from module paths) match the ones people see in official exports.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Blocks per stage for each supported depth.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (4, 8, 16, 32)


def make_activation(name: str | None) -> nn.Module:
    """Activation by config name; `None` means identity (as in the official configs)."""
    if name is None:
        return nn.Identity()
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "gelu": nn.GELU,
        "leaky_relu": nn.LeakyReLU,
        "hardsigmoid": nn.Hardsigmoid,
    }
    try:
        return table[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}") from None


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms stored as buffers (no parameters).

    The r50vd/r50vd_m/r101vd backbones use it, so their state dicts carry the four tensors but no
    `num_batches_tracked`; a checkpoint that still has that key is accepted and the key dropped.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every `BatchNorm2d` under `module` by a `FrozenBatchNorm2d` of the same width."""
    if isinstance(module, nn.BatchNorm2d):
        return FrozenBatchNorm2d(module.num_features, module.eps)
    for name, child in module.named_children():
        frozen = freeze_batch_norm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module


class ConvNormLayer(nn.Module):
    """Conv + BatchNorm + optional activation; by default the padding keeps the size at stride 1.

    The backbone and the encoder's CCFF both use it (the encoder with explicit padding / bias).
    """

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int,
        act: str | None = None,
        padding: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=pad, bias=bias)
        self.norm: nn.Module = nn.BatchNorm2d(ch_out)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _projection_shortcut(ch_in: int, ch_out: int, stride: int) -> nn.Module:
    """Variant-d shortcut: average-pool then 1x1 conv when downsampling, plain 1x1 conv otherwise."""
    if stride == 2:
        return nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                    ("conv", ConvNormLayer(ch_in, ch_out, 1, 1)),
                ]
            )
        )
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34). `short` is registered first, as officially."""

    expansion = 1

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu") -> None:
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _projection_shortcut(ch_in, ch_out, stride)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1, act=None)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch2b(self.branch2a(x))
        short = x if self.shortcut else self.short(x)
        return self.act(out + short)


class BottleNeck(nn.Module):
    """1x1 -> 3x3 (strided, variant d) -> 1x1 x4 with a residual (ResNet-50/101)."""

    expansion = 4

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu") -> None:
        super().__init__()
        width = ch_out
        self.branch2a = ConvNormLayer(ch_in, width, 1, 1, act=act)
        self.branch2b = ConvNormLayer(width, width, 3, stride, act=act)
        self.branch2c = ConvNormLayer(width, ch_out * self.expansion, 1, 1)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _projection_shortcut(ch_in, ch_out * self.expansion, stride)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        short = x if self.shortcut else self.short(x)
        return self.act(out + short)


class Blocks(nn.Module):
    """One ResNet stage: the first block projects (and downsamples except in stage 2)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[BottleNeck],
        ch_in: int,
        ch_out: int,
        count: int,
        stage_num: int,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            stride = 2 if i == 0 and stage_num != 2 else 1
            self.blocks.append(block(ch_in, ch_out, stride=stride, shortcut=i != 0, act=act))
            if i == 0:
                ch_in = ch_out * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PResNet(nn.Module):
    """ResNet-vd backbone returning the feature maps of the stages in `return_idx`."""

    def __init__(
        self,
        depth: int,
        return_idx: tuple[int, ...] = (1, 2, 3),
        act: str = "relu",
        freeze_at: int = -1,
        freeze_norm: bool = False,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"unsupported PResNet depth {depth}; expected one of {sorted(STAGE_BLOCKS)}")
        ch_in = 64
        stem = [
            (3, ch_in // 2, 2, "conv1_1"),
            (ch_in // 2, ch_in // 2, 1, "conv1_2"),
            (ch_in // 2, ch_in, 1, "conv1_3"),
        ]
        self.conv1 = nn.Sequential(
            OrderedDict([(name, ConvNormLayer(cin, cout, 3, s, act=act)) for cin, cout, s, name in stem])
        )
        block: type[BasicBlock] | type[BottleNeck] = BottleNeck if depth >= 50 else BasicBlock
        out_channels = [block.expansion * w for w in STAGE_WIDTHS]
        self.res_layers = nn.ModuleList()
        for i, count in enumerate(STAGE_BLOCKS[depth]):
            self.res_layers.append(Blocks(block, ch_in, STAGE_WIDTHS[i], count, i + 2, act=act))
            ch_in = out_channels[i]
        self.return_idx = tuple(return_idx)
        self.out_channels = [out_channels[i] for i in self.return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in self.return_idx]

        if freeze_at >= 0:
            # Only affects which parameters count as trainable; kept to mirror the official configs.
            frozen = [self.conv1, *list(self.res_layers)[: min(freeze_at, len(self.res_layers))]]
            for module in frozen:
                for p in module.parameters():
                    p.requires_grad = False
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        outs: list[torch.Tensor] = []
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
