"""HybridEncoder of RT-DETRv2: AIFI (one transformer layer on the coarsest map) + CCFF (FPN/PAN).

The CCFF uses RepVGG blocks; `RepVggBlock.convert_to_deploy` folds each into a single 3x3 conv
so the deploy graph (and its INT8 quantization) sees one conv per block.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from rtq.models.fold import conv_bn_weights
from rtq.models.presnet import ConvNormLayer, make_activation


class RepVggBlock(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN branches, summed then activated; fusable into one 3x3 conv."""

    def __init__(self, ch_in: int, ch_out: int, act: str | None = "relu") -> None:
        super().__init__()
        self.ch_in = ch_in
        self.ch_out = ch_out
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        """Replace both branches by one biased 3x3 conv computing the same function."""
        if hasattr(self, "conv"):
            return
        k3, b3 = conv_bn_weights(self.conv1.conv, self.conv1.norm)
        k1, b1 = conv_bn_weights(self.conv2.conv, self.conv2.norm)
        fused = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, padding=1, bias=True).to(k3.device, k3.dtype)
        fused.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]))
        assert fused.bias is not None
        fused.bias.copy_(b3 + b1)
        self.conv = fused
        del self.conv1
        del self.conv2


class CSPRepLayer(nn.Module):
    """CSP block: two 1x1 branches, RepVGG blocks on one, sum, then an optional 1x1 (`conv3`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 3,
        expansion: float = 1.0,
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3: nn.Module = (
            ConvNormLayer(hidden, out_channels, 1, 1, act=act) if hidden != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer layer; the position embedding is added to queries and keys only."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = make_activation(activation)

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        q = k = src if pos_embed is None else src + pos_embed
        attended, _ = self.self_attn(q, k, value=src, need_weights=False)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerEncoder(nn.Module):
    """A stack of identical encoder layers."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed=pos_embed)
        return src


def build_2d_sincos_position_embedding(
    w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0
) -> torch.Tensor:
    """[1, w*h, embed_dim] sin-cos embedding, with the official `meshgrid(w, h, 'ij')` layout.

    For flattened position p the first half encodes p // h and the second half p % h; on square
    maps that is (row, column), which is what the trained weights expect.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for the 2D sin-cos embedding, got {embed_dim}")
    grid_w, grid_h = torch.meshgrid(
        torch.arange(int(w), dtype=torch.float32), torch.arange(int(h), dtype=torch.float32), indexing="ij"
    )
    pos_dim = embed_dim // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = grid_w.flatten()[..., None] @ omega[None]
    out_h = grid_h.flatten()[..., None] @ omega[None]
    return torch.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None, :, :]


class HybridEncoder(nn.Module):
    """Projects the backbone maps to `hidden_dim`, runs AIFI, then top-down FPN and bottom-up PAN."""

    def __init__(
        self,
        in_channels: tuple[int, ...] = (512, 1024, 2048),
        feat_strides: tuple[int, ...] = (8, 16, 32),
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act: str = "gelu",
        use_encoder_idx: tuple[int, ...] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000.0,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
        eval_spatial_size: tuple[int, int] | None = (640, 640),
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.eval_spatial_size = eval_spatial_size
        self.out_channels = [hidden_dim] * len(in_channels)
        self.out_strides = self.feat_strides

        self.input_proj = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(c, hidden_dim, kernel_size=1, bias=False)),
                        ("norm", nn.BatchNorm2d(hidden_dim)),
                    ]
                )
            )
            for c in in_channels
        )
        layer = TransformerEncoderLayer(hidden_dim, nhead, dim_feedforward, dropout, enc_act)
        self.encoder = nn.ModuleList(
            TransformerEncoder(copy.deepcopy(layer), num_encoder_layers) for _ in self.use_encoder_idx
        )

        n_blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList()
        self.fpn_blocks = nn.ModuleList()
        for _ in range(len(in_channels) - 1):
            self.lateral_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=act))
            self.fpn_blocks.append(CSPRepLayer(hidden_dim * 2, hidden_dim, n_blocks, expansion, act))
        self.downsample_convs = nn.ModuleList()
        self.pan_blocks = nn.ModuleList()
        for _ in range(len(in_channels) - 1):
            self.downsample_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=act))
            self.pan_blocks.append(CSPRepLayer(hidden_dim * 2, hidden_dim, n_blocks, expansion, act))

        if eval_spatial_size is not None:
            for idx in self.use_encoder_idx:
                stride = self.feat_strides[idx]
                pos = build_2d_sincos_position_embedding(
                    eval_spatial_size[1] // stride, eval_spatial_size[0] // stride, hidden_dim, pe_temperature
                )
                # Non-persistent: official checkpoints do not carry it.
                self.register_buffer(f"pos_embed{idx}", pos, persistent=False)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [self.input_proj[i](feat) for i, feat in enumerate(feats)]

        for i, enc_ind in enumerate(self.use_encoder_idx):
            h, w = proj[enc_ind].shape[2:]
            src = proj[enc_ind].flatten(2).permute(0, 2, 1)
            if self.training or self.eval_spatial_size is None:
                pos = build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature).to(
                    src.device
                )
            else:
                pos = getattr(self, f"pos_embed{enc_ind}")
            memory = self.encoder[i](src, pos_embed=pos)
            proj[enc_ind] = memory.permute(0, 2, 1).reshape(-1, self.hidden_dim, h, w).contiguous()

        n = len(self.in_channels)
        inner_outs = [proj[-1]]
        for idx in range(n - 1, 0, -1):
            feat_high = self.lateral_convs[n - 1 - idx](inner_outs[0])
            inner_outs[0] = feat_high
            upsampled = F.interpolate(feat_high, scale_factor=2.0, mode="nearest")
            inner_outs.insert(
                0, self.fpn_blocks[n - 1 - idx](torch.concat([upsampled, proj[idx - 1]], dim=1))
            )

        outs = [inner_outs[0]]
        for idx in range(n - 1):
            down = self.downsample_convs[idx](outs[-1])
            outs.append(self.pan_blocks[idx](torch.concat([down, inner_outs[idx + 1]], dim=1)))
        return outs
