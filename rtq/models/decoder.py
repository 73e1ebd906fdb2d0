"""RTDETRTransformerv2 decoder (inference path): query selection + deformable-attention layers.

Only what evaluation and export need is implemented (no denoising groups, no auxiliary outputs),
but every official parameter and buffer exists under its official name so released checkpoints
load strictly. Shapes use -1 for the batch dimension so the ONNX graph keeps a symbolic batch.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from rtq.models.presnet import make_activation

CROSS_ATTN_METHODS = ("default", "discrete")


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logit with the official clipping (to [0, 1], then away from 0 and 1 by `eps`)."""
    x = x.clip(min=0.0, max=1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


class MLP(nn.Module):
    """Plain stack of Linear layers with an activation between them (not after the last)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str = "relu"
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim, *dims], [*dims, output_dim], strict=True)
        )
        self.act = make_activation(act)

    def linear(self, index: int) -> nn.Linear:
        """The `index`-th Linear layer, typed (for initialisation code)."""
        layer = self.layers[index]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = self.act(x)
        return x


def sample_values(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    attention_weights: torch.Tensor,
    num_points_list: list[int],
    num_heads: int,
    method: str,
) -> torch.Tensor:
    """Attention-weighted sum of values sampled at `locations` on every level.

    value [B, L, C] (already projected); locations [B, Q, M, P, 2] in 0..1 (x, y);
    attention_weights [B, Q, M, P]; returns [B, Q, C]. `default` samples bilinearly with
    `grid_sample` (align_corners=False); `discrete` gathers cell `int(loc * size + 0.5)` with no
    interpolation, the official rule (note it is half a cell off the bilinear pixel centres).
    """
    channels = value.shape[2]
    head_dim = channels // num_heads
    num_queries = locations.shape[1]
    total_points = sum(num_points_list)

    # [B, L, C] -> per level [B*M, head_dim, H, W]; channel c = m * head_dim + d.
    value_levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * locations - 1 if method == "default" else locations
    grids = grids.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*M, Q, P, 2]
    grids_per_level = grids.split(num_points_list, dim=-2)

    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_levels[level].permute(0, 2, 1).reshape(-1, head_dim, h, w)
        grid_l = grids_per_level[level]
        if method == "default":
            sampled_l = F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        else:
            points = num_points_list[level]
            # Truncate loc * size + 0.5 (official rule); the official code clamps x and y with
            # H - 1 (the same thing on the square maps every variant uses).
            col = (grid_l[..., 0] * w + 0.5).to(torch.int64).clamp(0, h - 1)
            row = (grid_l[..., 1] * h + 0.5).to(torch.int64).clamp(0, h - 1)
            flat_index = (row * w + col).reshape(-1, 1, num_queries * points)
            gathered = value_l.flatten(2).gather(2, flat_index.expand(-1, head_dim, -1))
            sampled_l = gathered.reshape(-1, head_dim, num_queries, points)
        sampled.append(sampled_l)

    weights = attention_weights.permute(0, 2, 1, 3).reshape(-1, 1, num_queries, total_points)
    output = (torch.concat(sampled, dim=-1) * weights).sum(-1).reshape(-1, channels, num_queries)
    return output.permute(0, 2, 1)


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable attention with box-relative offsets (reference points are cx,cy,w,h).

    `sampling_offsets` and `attention_weights` are plain Linear layers reading the same query, so
    graph passes can find them by name in the exported ONNX.
    """

    num_points_scale: torch.Tensor

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int | list[int] = 4,
        method: str = "default",
        offset_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if method not in CROSS_ATTN_METHODS:
            raise ValueError(f"unknown cross_attn_method {method!r}; expected one of {CROSS_ATTN_METHODS}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.offset_scale = offset_scale
        self.method = method
        points = list(num_points) if isinstance(num_points, list) else [num_points] * num_levels
        if len(points) != num_levels:
            raise ValueError(f"num_points has {len(points)} entries for {num_levels} levels")
        self.num_points_list = points
        scale = [1 / n for n in points for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32))
        self.total_points = num_heads * sum(points)
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise ValueError("embed_dim must be divisible by num_heads")

        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()
        if method == "discrete":
            # Mirrors the official configs (offsets are not trained in the discrete variant).
            for p in self.sampling_offsets.parameters():
                p.requires_grad = False

    def _reset_parameters(self) -> None:
        """Offsets start on rays around the reference point, one ray per head (official scheme)."""
        init.constant_(self.sampling_offsets.weight, 0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 2).tile([1, sum(self.num_points_list), 1])
        steps = torch.concat([torch.arange(1, n + 1) for n in self.num_points_list]).reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((grid * steps).flatten())
        init.constant_(self.attention_weights.weight, 0)
        init.constant_(self.attention_weights.bias, 0)
        init.xavier_uniform_(self.value_proj.weight)
        init.constant_(self.value_proj.bias, 0)
        init.xavier_uniform_(self.output_proj.weight)
        init.constant_(self.output_proj.bias, 0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query [B, Q, C]; reference_points [B, Q, 1, 4] (cx, cy, w, h in 0..1); value [B, L, C]."""
        num_queries = query.shape[1]
        points = sum(self.num_points_list)
        value = self.value_proj(value)
        offsets = self.sampling_offsets(query).reshape(-1, num_queries, self.num_heads, points, 2)
        weights = self.attention_weights(query).reshape(-1, num_queries, self.num_heads, points)
        weights = F.softmax(weights, dim=-1)
        scale = self.num_points_scale.to(dtype=query.dtype).unsqueeze(-1)
        offset = offsets * scale * reference_points[:, :, None, :, 2:] * self.offset_scale
        locations = reference_points[:, :, None, :, :2] + offset
        output = sample_values(
            value, spatial_shapes, locations, weights, self.num_points_list, self.num_heads, self.method
        )
        return self.output_proj(output)


class TransformerDecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention and FFN, each post-norm with a residual."""

    def __init__(
        self,
        d_model: int = 256,
        n_head: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        n_levels: int = 3,
        n_points: int | list[int] = 4,
        cross_attn_method: str = "default",
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points, method=cross_attn_method)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = make_activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        init.xavier_uniform_(self.linear1.weight)
        init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        target: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        query_pos_embed: torch.Tensor,
    ) -> torch.Tensor:
        q = k = target + query_pos_embed
        attended, _ = self.self_attn(q, k, value=target, need_weights=False)
        target = self.norm1(target + self.dropout1(attended))
        crossed = self.cross_attn(target + query_pos_embed, reference_points, memory, spatial_shapes)
        target = self.norm2(target + self.dropout2(crossed))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(target))))
        return self.norm3(target + self.dropout4(ffn))


class TransformerDecoder(nn.Module):
    """Runs the layers up to `eval_idx`, refining boxes layer by layer (references detached)."""

    def __init__(
        self, hidden_dim: int, decoder_layer: TransformerDecoderLayer, num_layers: int, eval_idx: int = -1
    ):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx

    def forward(
        self,
        target: torch.Tensor,
        ref_points_unact: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        bbox_head: nn.ModuleList,
        score_head: nn.ModuleList,
        query_pos_head: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (boxes [B, Q, 4] sigmoid cx,cy,w,h, logits [B, Q, num_classes]) of layer `eval_idx`."""
        ref = F.sigmoid(ref_points_unact)
        output = target
        for i, layer in enumerate(self.layers):
            query_pos = query_pos_head(ref)
            output = layer(output, ref.unsqueeze(2), memory, spatial_shapes, query_pos)
            boxes = F.sigmoid(bbox_head[i](output) + inverse_sigmoid(ref))
            if i == self.eval_idx:
                return boxes, score_head[i](output)
            ref = boxes.detach()
        raise RuntimeError(f"eval_idx {self.eval_idx} is outside the {self.num_layers} decoder layers")


def generate_anchors(
    spatial_shapes: list[tuple[int, int]], grid_size: float = 0.05, eps: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor logits [1, L, 4] (+inf where invalid) and the valid mask [1, L, 1] for all levels."""
    anchors = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid_xy = (torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0) + 0.5) / torch.tensor(
            [w, h], dtype=torch.float32
        )
        wh = torch.ones_like(grid_xy) * grid_size * (2.0**lvl)
        anchors.append(torch.concat([grid_xy, wh], dim=-1).reshape(-1, h * w, 4))
    all_anchors = torch.concat(anchors, dim=1)
    valid_mask = ((all_anchors > eps) * (all_anchors < 1 - eps)).all(-1, keepdim=True)
    logits = torch.log(all_anchors / (1 - all_anchors))
    return torch.where(valid_mask, logits, torch.inf), valid_mask


class RTDETRTransformerv2(nn.Module):
    """Query selection from encoder memory, then the deformable decoder; eval/inference only."""

    anchors: torch.Tensor
    valid_mask: torch.Tensor

    def __init__(
        self,
        num_classes: int = 80,
        hidden_dim: int = 256,
        num_queries: int = 300,
        feat_channels: tuple[int, ...] = (256, 256, 256),
        feat_strides: tuple[int, ...] = (8, 16, 32),
        num_levels: int = 3,
        num_points: int | list[int] = 4,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        num_denoising: int = 100,
        eval_spatial_size: tuple[int, int] | None = (640, 640),
        eval_idx: int = -1,
        eps: float = 1e-2,
        cross_attn_method: str = "default",
    ) -> None:
        super().__init__()
        if len(feat_channels) != num_levels or len(feat_strides) != num_levels:
            raise ValueError(
                "feat_channels and feat_strides need one entry per level (extra levels unsupported)"
            )
        self.hidden_dim = hidden_dim
        self.nhead = nhead
        self.feat_strides = list(feat_strides)
        self.num_levels = num_levels
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.eps = eps
        self.num_layers = num_layers
        self.eval_spatial_size = eval_spatial_size
        self.cross_attn_method = cross_attn_method
        # The query rows' positions (0..L-1) in the flattened memory, kept from the last forward
        # so callers can realign rows whose order differs between implementations.
        self.last_enc_topk_index: torch.Tensor | None = None

        self.input_proj = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    [("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))]
                )
            )
            for c in feat_channels
        )
        layer = TransformerDecoderLayer(
            hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points, cross_attn_method
        )
        self.decoder = TransformerDecoder(hidden_dim, layer, num_layers, eval_idx)
        if num_denoising > 0:
            # Training-only, present so official state dicts load strictly.
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)
        self.enc_output = nn.Sequential(
            OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)), ("norm", nn.LayerNorm(hidden_dim))])
        )
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(num_layers))

        if eval_spatial_size is not None:
            anchors, valid_mask = generate_anchors(self._eval_spatial_shapes(), eps=eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid_mask)
        self._reset_parameters()

    def _eval_spatial_shapes(self) -> list[tuple[int, int]]:
        assert self.eval_spatial_size is not None
        h, w = self.eval_spatial_size
        return [(int(h / s), int(w / s)) for s in self.feat_strides]

    def _reset_parameters(self) -> None:
        prior_bias = -math.log((1 - 0.01) / 0.01)  # focal-loss prior of 1% foreground
        init.constant_(self.enc_score_head.bias, prior_bias)
        last_box_layers = [self.enc_bbox_head.linear(-1)]
        for cls_head, box_head in zip(self.dec_score_head, self.dec_bbox_head, strict=True):
            assert isinstance(cls_head, nn.Linear) and isinstance(box_head, MLP)
            init.constant_(cls_head.bias, prior_bias)
            last_box_layers.append(box_head.linear(-1))
        for layer in last_box_layers:
            init.constant_(layer.weight, 0)
            init.constant_(layer.bias, 0)
        enc_proj = self.enc_output[0]
        assert isinstance(enc_proj, nn.Linear)
        init.xavier_uniform_(enc_proj.weight)
        init.xavier_uniform_(self.query_pos_head.linear(0).weight)
        init.xavier_uniform_(self.query_pos_head.linear(1).weight)
        for proj in self.input_proj:
            assert isinstance(proj, nn.Sequential)
            conv = proj[0]
            assert isinstance(conv, nn.Conv2d)
            init.xavier_uniform_(conv.weight)
        if hasattr(self, "denoising_class_embed"):
            with torch.no_grad():
                self.denoising_class_embed.weight[-1].zero_()

    def _flatten_levels(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Project each level and concatenate them as [B, sum(H*W), C], 80x80 level first.

        Level sizes come from `eval_spatial_size` (anchors are precomputed for it), so they are
        constants in an exported graph rather than traced shape arithmetic.
        """
        shapes = self._eval_spatial_shapes()
        flat = []
        for proj, feat, (h, w) in zip(self.input_proj, feats, shapes, strict=True):
            x = proj(feat)
            if not torch.jit.is_tracing() and tuple(x.shape[2:]) != (h, w):
                raise ValueError(
                    f"feature map {tuple(x.shape[2:])} does not match {(h, w)} expected for input size "
                    f"{self.eval_spatial_size}; resize images to that size"
                )
            flat.append(x.flatten(2).permute(0, 2, 1))
        return torch.concat(flat, 1), shapes

    def select_queries(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-`num_queries` memory positions by best class score -> (content, box logits, indices)."""
        if self.training or self.eval_spatial_size is None:
            raise RuntimeError("this decoder is inference-only and needs eval_spatial_size")
        memory = self.valid_mask.to(memory.dtype) * memory
        output_memory = self.enc_output(memory)
        scores = self.enc_score_head(output_memory)
        coords_unact = self.enc_bbox_head(output_memory) + self.anchors
        topk_index = torch.topk(scores.max(-1).values, self.num_queries, dim=-1).indices
        topk_coords = coords_unact.gather(1, topk_index.unsqueeze(-1).expand(-1, -1, coords_unact.shape[-1]))
        topk_memory = output_memory.gather(
            1, topk_index.unsqueeze(-1).expand(-1, -1, output_memory.shape[-1])
        )
        return topk_memory.detach(), topk_coords.detach(), topk_index

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        memory, spatial_shapes = self._flatten_levels(feats)
        content, ref_unact, topk_index = self.select_queries(memory)
        self.last_enc_topk_index = topk_index
        boxes, logits = self.decoder(
            content,
            ref_unact,
            memory,
            spatial_shapes,
            self.dec_bbox_head,
            self.dec_score_head,
            self.query_pos_head,
        )
        return {"pred_logits": logits, "pred_boxes": boxes}
