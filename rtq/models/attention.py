"""Multi-head attention from four plain `nn.Linear` projections, a drop-in for `nn.MultiheadAttention`.

`nn.MultiheadAttention` keeps q/k/v in one `in_proj_weight` and calls `F.multi_head_attention_forward`,
which reads that parameter and `out_proj.weight` directly: a quantizer wrapped around a Linear module
never runs there, so modelopt leaves all four projections in float (they export as float MatMul/Gemm).
`LinearMultiheadAttention` computes the same thing through `q_proj`, `k_proj`, `v_proj` and `out_proj`
modules, which modelopt quantizes like any other Linear.

`split_attention(model)` swaps every `nn.MultiheadAttention` of a model for this module, copying the
weights, so checkpoints keep the official `in_proj_weight` layout and only a quantization recipe that
asks for it (`split_attention: true`) sees the split form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` (same embed dim for q/k/v, no bias_k/bias_v, no zero attention) as Linears.

    `forward` takes the arguments of `nn.MultiheadAttention.forward`; attention weights are not
    returned (`need_weights=True` is refused), the second result is always None.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> LinearMultiheadAttention:
        """A copy of `mha` (weights, dropout, layout, device, dtype, train/eval mode) in the Linear form."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "only nn.MultiheadAttention with kdim == vdim == embed_dim, no add_bias_kv and no "
                "add_zero_attn can be split into Linear projections"
            )
        weight = mha.in_proj_weight
        bias = mha.in_proj_bias
        new = cls(
            mha.embed_dim, mha.num_heads, mha.dropout, bias=bias is not None, batch_first=mha.batch_first
        )
        new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                rows = slice(i * mha.embed_dim, (i + 1) * mha.embed_dim)
                proj.weight.copy_(weight[rows])
                if bias is not None:
                    proj.bias.copy_(bias[rows])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, E] -> [B, H, L, D]."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """The additive float mask [B or 1, H or 1, L, S] SDPA takes (MHA's bool True means "masked")."""

        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
                return zeros.masked_fill(mask, float("-inf"))
            return mask.to(dtype)

        merged = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            merged = mask if mask.dim() == 2 else mask.view(batch, self.num_heads, *mask.shape[-2:])
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, -1)
            merged = padding if merged is None else merged + padding
        return merged

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("LinearMultiheadAttention returns no attention weights; pass need_weights=False")
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = self._mask(attn_mask, key_padding_mask, query.shape[0], q.dtype)
        dropout = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
        )
        out = self.out_proj(attended.transpose(1, 2).flatten(-2))
        return (out if self.batch_first else out.transpose(0, 1)), None


def split_attention(model: nn.Module) -> int:
    """Swap each `nn.MultiheadAttention` below `model` for a `LinearMultiheadAttention`; returns how many."""
    targets = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.MultiheadAttention)]
    for name, mha in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LinearMultiheadAttention.from_torch(mha))
    return len(targets)
