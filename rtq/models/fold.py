"""BatchNorm folding for the deploy form.

Quantizing a Conv whose BatchNorm still follows it calibrates and rounds weights that are not
the ones deployed: the engine (or ONNX Runtime) must then fold the BatchNorm into already-quantized
weights, which it cannot do exactly, and ONNX Runtime leaves Q/DQ -> Conv -> BatchNormalization
unfused. Folding before quantization makes the quantized weights the deployed weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def conv_bn_weights(conv: nn.Conv2d, norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of `conv` with its eval-mode BatchNorm (plain or frozen) folded in."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    return weight.detach(), bias.detach()


def _is_batch_norm(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("running_mean", "running_var", "weight", "bias", "eps"))


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold every `conv` + `norm` pair (ConvNormLayer, input projections) into the conv; returns the count.

    The norm becomes `nn.Identity`, so module names (and quantization recipe globs) stay valid.
    """
    folded = 0
    for module in list(model.modules()):
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if not isinstance(conv, nn.Conv2d) or norm is None or not _is_batch_norm(norm):
            continue
        weight, bias = conv_bn_weights(conv, norm)
        conv.weight = nn.Parameter(weight)
        conv.bias = nn.Parameter(bias)
        module.norm = nn.Identity()
        folded += 1
    return folded
