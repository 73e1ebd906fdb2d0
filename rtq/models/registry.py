"""RT-DETRv2 variants as data, and the constructor of a (randomly initialised) network per variant.

Each row mirrors one official config (`configs/rtdetrv2/*.yml` of lyuwenyu/RT-DETR); the `_dsp`
rows differ from their twins only in the cross-attention sampling method.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rtq.errors import UserError
from rtq.models.decoder import RTDETRTransformerv2
from rtq.models.hybrid_encoder import HybridEncoder
from rtq.models.presnet import PResNet
from rtq.models.rtdetr import RTDETR


@dataclass(frozen=True)
class RTDETRVariant:
    """Hyper-parameters that differ between the official RT-DETRv2 configs."""

    depth: int
    freeze_norm: bool
    freeze_at: int
    encoder_in_channels: tuple[int, int, int]
    encoder_hidden_dim: int
    encoder_ffn_dim: int
    expansion: float
    decoder_layers: int
    eval_idx: int = -1
    cross_attn_method: str = "default"
    input_size: int = 640
    num_classes: int = 80


_SMALL = (128, 256, 512)
_LARGE = (512, 1024, 2048)
_BASE: dict[str, RTDETRVariant] = {
    "rtdetrv2_r18vd": RTDETRVariant(18, False, -1, _SMALL, 256, 1024, 0.5, 3),
    "rtdetrv2_r34vd": RTDETRVariant(34, False, -1, _SMALL, 256, 1024, 0.5, 4),
    "rtdetrv2_r50vd_m": RTDETRVariant(50, True, 0, _LARGE, 256, 1024, 0.5, 6, eval_idx=2),
    "rtdetrv2_r50vd": RTDETRVariant(50, True, 0, _LARGE, 256, 1024, 1.0, 6),
    "rtdetrv2_r101vd": RTDETRVariant(101, True, 0, _LARGE, 384, 2048, 1.0, 6),
}
VARIANTS: dict[str, RTDETRVariant] = {
    **_BASE,
    **{
        f"{name}_dsp": replace(_BASE[name], cross_attn_method="discrete")
        for name in ("rtdetrv2_r18vd", "rtdetrv2_r34vd", "rtdetrv2_r50vd_m", "rtdetrv2_r50vd")
    },
}


def get_variant(name: str) -> RTDETRVariant:
    """The variant row for `name`, or a `UserError` listing the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserError(
            f"unknown model name {name!r}; set model.name to one of: {', '.join(sorted(VARIANTS))}"
        ) from None


def construct(variant: RTDETRVariant) -> RTDETR:
    """Build the (randomly initialised) network for one variant row."""
    size = (variant.input_size, variant.input_size)
    backbone = PResNet(
        variant.depth, return_idx=(1, 2, 3), freeze_at=variant.freeze_at, freeze_norm=variant.freeze_norm
    )
    encoder = HybridEncoder(
        in_channels=variant.encoder_in_channels,
        hidden_dim=variant.encoder_hidden_dim,
        dim_feedforward=variant.encoder_ffn_dim,
        expansion=variant.expansion,
        eval_spatial_size=size,
    )
    decoder = RTDETRTransformerv2(
        num_classes=variant.num_classes,
        feat_channels=(variant.encoder_hidden_dim,) * 3,
        num_layers=variant.decoder_layers,
        eval_idx=variant.eval_idx,
        eval_spatial_size=size,
        cross_attn_method=variant.cross_attn_method,
    )
    return RTDETR(backbone, encoder, decoder)


def list_models() -> list[str]:
    """Every variant name `rtq.models.build.build_model` accepts."""
    return sorted(VARIANTS)
