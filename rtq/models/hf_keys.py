"""Official RT-DETRv2 state dicts <-> Hugging Face `RTDetrV2ForObjectDetection` ones; HF configs of variants.

One table of key templates serves both directions, so the mapping is invertible by construction:
`{s}`-style fields are integers, `{p}` one name (`weight`, `running_mean`), `{r}` a dotted rest. The
names follow transformers' RT-DETRv2 converter with the 5.x renames (`out_proj` -> `o_proj`,
`linear1/2` -> `mlp.fc1/fc2`, `encoder.encoder.N` -> `encoder.aifi.N`); packed attention
`in_proj_weight/bias` is split into `q/k/v_proj` and merged back. HF files carry the decoder heads once
(`model.decoder.class_embed/bbox_embed`; the top-level `class_embed/bbox_embed` are tied copies).

Not carried to HF, because they are derived and HF has no slot for them: `decoder.anchors`,
`decoder.valid_mask` (HF computes anchors per forward) and the backbone's `num_batches_tracked` (HF
freezes backbone norms). `complete_official` regenerates them from the variant (counters as 0, as in
the official EMA releases), so a round trip gives back the same keys, dtypes and values.
`num_points_scale` travels as HF's `n_points_scale` and is regenerated where a file lacks it.

RT-DETR v1 (`RTDetrForObjectDetection`, model_type `rt_detr`) has the same keys minus `n_points_scale`,
and its decoder computes what rtq's default-sampling decoder computes (`offsets / n_points * wh * 0.5`
is `offsets * (1/n_points) * wh * offset_scale` with the fixed 0.5; attention is softmaxed over all
levels' points jointly in both). Its config lacks `decoder_method`, `decoder_n_levels` and
`decoder_offset_scale` (read as default, `num_feature_levels` and 0.5), so v1 weights load into the
non-`_dsp` variants; v1 has no discrete sampling and no per-level point counts.

HF has no `eval_idx`: it always returns the last decoder layer. rtq's `rtdetrv2_r50vd_m` follows the
official config and returns layer 3 of 6, so it and an HF model with the same weights differ there.
An HF config with `eval_size` set makes transformers skip the AIFI position embedding in eval mode;
rtq always adds it, as the official code does (configs written here leave `eval_size` unset).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from rtq.errors import UserError
from rtq.models.decoder import generate_anchors
from rtq.models.presnet import STAGE_BLOCKS, STAGE_WIDTHS, BasicBlock, BottleNeck
from rtq.models.registry import VARIANTS, RTDETRVariant, get_variant
from rtq.models.signature import first_keys, variant_signature

HF_V2, HF_V1 = "rt_detr_v2", "rt_detr"
HF_MODEL_TYPES = (HF_V2, HF_V1)
HF_BACKBONE_TYPE = "rt_detr_resnet"
FEAT_STRIDES = (8, 16, 32)
NUM_LEVELS = len(FEAT_STRIDES)

# HF config fields every rtq variant shares: a checkpoint with other values has no rtq network.
FIXED_FIELDS: dict[str, Any] = {
    "d_model": 256,
    "num_queries": 300,
    "decoder_n_points": 4,
    "decoder_n_levels": NUM_LEVELS,
    "num_feature_levels": NUM_LEVELS,
    "decoder_offset_scale": 0.5,
    "feat_strides": list(FEAT_STRIDES),
    "encode_proj_layers": [2],
    "encoder_layers": 1,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "decoder_ffn_dim": 1024,
    "activation_function": "silu",
    "encoder_activation_function": "gelu",
    "decoder_activation_function": "relu",
    "normalize_before": False,
    "learn_initial_query": False,
    "with_box_refine": True,
    "positional_encoding_temperature": 10000,
    "layer_norm_eps": 1e-5,
    "batch_norm_eps": 1e-5,
}
BACKBONE_FIXED_FIELDS: dict[str, Any] = {
    "embedding_size": 64,
    "num_channels": 3,
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
    "out_indices": [2, 3, 4],
}
# Fields that tell the variants apart.
VARIANT_FIELDS = (
    "encoder_in_channels",
    "encoder_hidden_dim",
    "encoder_ffn_dim",
    "hidden_expansion",
    "decoder_layers",
    "decoder_in_channels",
    "decoder_method",
)
BACKBONE_VARIANT_FIELDS = ("layer_type", "depths", "hidden_sizes")

_FIELD = re.compile(r"\{(\w)\}")
_GROUPS = {"p": r"[A-Za-z_]+", "r": r".+"}  # any other field is an integer


def _templates() -> list[tuple[str, str]]:
    """(official, HF) key templates; a more specific template comes before a general one."""
    pairs: list[tuple[str, str]] = []
    norm = (("conv", "convolution"), ("norm", "normalization"))
    backbone = "model.backbone.model."
    block, layer = "backbone.res_layers.{s}.blocks.{b}.", backbone + "encoder.stages.{s}.layers.{b}."
    for ours, theirs in norm:
        stem = f"{backbone}embedder.embedder."
        pairs += [
            (f"backbone.conv1.conv1_{i + 1}.{ours}.{{p}}", f"{stem}{i}.{theirs}.{{p}}") for i in range(3)
        ]
        pairs += [
            (f"{block}branch2{b}.{ours}.{{p}}", f"{layer}layer.{i}.{theirs}.{{p}}")
            for i, b in enumerate("abc")
        ]
        # The pooled shortcut of strided stages first, then the plain 1x1 one of the first stage.
        pairs.append((f"{block}short.conv.{ours}.{{p}}", f"{layer}shortcut.1.{theirs}.{{p}}"))
        pairs.append((f"{block}short.{ours}.{{p}}", f"{layer}shortcut.{theirs}.{{p}}"))
        index = "0" if ours == "conv" else "1"
        for part in ("encoder", "decoder"):
            pairs.append(
                (f"{part}.input_proj.{{i}}.{ours}.{{p}}", f"model.{part}_input_proj.{{i}}.{index}.{{p}}")
            )
    attention = [("self_attn.out_proj", "self_attn.o_proj"), *[(f"self_attn.{x}_proj",) * 2 for x in "qkv"]]
    ffn = [("linear1", "mlp.fc1"), ("linear2", "mlp.fc2")]
    aifi = ("encoder.encoder.{i}.layers.{j}.", "model.encoder.aifi.{i}.layers.{j}.")
    for ours, theirs in [*attention, *ffn, ("norm1", "self_attn_layer_norm"), ("norm2", "final_layer_norm")]:
        pairs.append((f"{aifi[0]}{ours}.{{p}}", f"{aifi[1]}{theirs}.{{p}}"))
    pairs += [
        (f"encoder.{m}.{{r}}", f"model.encoder.{m}.{{r}}")
        for m in ("lateral_convs", "fpn_blocks", "pan_blocks", "downsample_convs")
    ]
    dec = ("decoder.decoder.layers.{i}.", "model.decoder.layers.{i}.")
    pairs.append((f"{dec[0]}cross_attn.num_points_scale", f"{dec[1]}encoder_attn.n_points_scale"))
    pairs.append((f"{dec[0]}cross_attn.{{r}}", f"{dec[1]}encoder_attn.{{r}}"))
    norms = [
        ("norm1", "self_attn_layer_norm"),
        ("norm2", "encoder_attn_layer_norm"),
        ("norm3", "final_layer_norm"),
    ]
    pairs += [
        (f"{dec[0]}{ours}.{{p}}", f"{dec[1]}{theirs}.{{p}}") for ours, theirs in [*attention, *ffn, *norms]
    ]
    pairs += [
        ("decoder.query_pos_head.{r}", "model.decoder.query_pos_head.{r}"),
        ("decoder.denoising_class_embed.{p}", "model.denoising_class_embed.{p}"),
        ("decoder.enc_output.proj.{p}", "model.enc_output.0.{p}"),
        ("decoder.enc_output.norm.{p}", "model.enc_output.1.{p}"),
        ("decoder.enc_score_head.{p}", "model.enc_score_head.{p}"),
        ("decoder.enc_bbox_head.{r}", "model.enc_bbox_head.{r}"),
        ("decoder.dec_score_head.{i}.{p}", "model.decoder.class_embed.{i}.{p}"),
        ("decoder.dec_bbox_head.{i}.{r}", "model.decoder.bbox_embed.{i}.{r}"),
    ]
    return pairs


def _regex(template: str) -> re.Pattern[str]:
    parts = _FIELD.split(template)  # literal, field, literal, field, ...
    return re.compile(
        "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_GROUPS.get(part, r'[0-9]+')})"
            for i, part in enumerate(parts)
        )
    )


Table = list[tuple[re.Pattern[str], str]]
_TO_HF: Table = [(_regex(ours), theirs) for ours, theirs in _templates()]
_TO_OFFICIAL: Table = [(_regex(theirs), ours) for ours, theirs in _templates()]
# Tied copies a model's own state_dict() lists besides the decoder's heads.
_HF_ALIASES: Table = [
    (_regex("class_embed.{i}.{p}"), "model.decoder.class_embed.{i}.{p}"),
    (_regex("bbox_embed.{i}.{r}"), "model.decoder.bbox_embed.{i}.{r}"),
]
# Names of files written before transformers 5 (the Hub's RT-DETR checkpoints, and v1 `save_pretrained`
# output), renamed the way transformers renames them on load.
_LEGACY_HF = [
    (re.compile(r"\.self_attn\.out_proj\."), ".self_attn.o_proj."),
    (re.compile(r"\.layers\.(\d+)\.fc([12])\."), r".layers.\1.mlp.fc\2."),
    (re.compile(r"^model\.encoder\.encoder\.(\d+)\.layers\."), r"model.encoder.aifi.\1.layers."),
]
_NOT_CARRIED = re.compile(r"decoder\.anchors|decoder\.valid_mask|backbone\..+\.num_batches_tracked")
_PACKED = re.compile(r"(?P<prefix>.+\.self_attn)\.in_proj_(?P<p>weight|bias)")
_SPLIT = re.compile(r"(?P<prefix>.+\.self_attn)\.(?P<x>[qkv])_proj\.(?P<p>weight|bias)")


def _rename(key: str, table: Table) -> str | None:
    for pattern, template in table:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def is_hf_layout(state: Mapping[str, Any]) -> bool:
    """True when `state` uses HF key names (the official layout has none under `model.`)."""
    return any(k.startswith("model.") for k in state)


def official_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF `RTDetrV2ForObjectDetection` state dict (as `save_pretrained` writes it) of an official one."""
    split = [pair for key, value in state.items() for pair in _split_attention(key, value)]
    out, unmapped = _renamed([(k, v) for k, v in split if not _NOT_CARRIED.fullmatch(k)], _TO_HF)
    if unmapped:
        raise UserError(
            f"checkpoint keys with no Hugging Face name: {first_keys(unmapped)}; "
            f"is it an RT-DETRv2 checkpoint?"
        )
    return out


def hf_to_official(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official-layout state dict of an HF one (v2 or v1); derived buffers are not added here."""
    modern = {_modern(key): value for key, value in state.items()}
    untied: dict[str, torch.Tensor] = {}
    for key, value in modern.items():
        alias = _rename(key, _HF_ALIASES)
        if alias is None:
            untied[key] = value
        elif alias not in modern:  # a tied copy counts only when the decoder's own is absent
            untied[alias] = value
    renamed, unmapped = _renamed(untied.items(), _TO_OFFICIAL)
    if unmapped:
        raise UserError(
            f"{source} holds Hugging Face keys rtq has no place for: {first_keys(unmapped)}; rtq reads "
            f"RT-DETR (v1/v2) ResNet checkpoints of RTDetrV2ForObjectDetection or RTDetrForObjectDetection"
        )
    return _merge_attention(renamed)


def _renamed(
    items: Iterable[tuple[str, torch.Tensor]], table: Table
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`items` under their names in `table`, and the keys `table` has no name for."""
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in items:
        new = _rename(key, table)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    return out, unmapped


def _split_attention(key: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Packed `in_proj_weight/bias` as HF's `q/k/v_proj` (the inverse of `_merge_attention`)."""
    packed = _PACKED.fullmatch(key)
    if packed is None:
        return [(key, value)]
    prefix, p = packed["prefix"], packed["p"]
    return [(f"{prefix}.{x}_proj.{p}", part.clone()) for x, part in zip("qkv", value.chunk(3), strict=True)]


def _modern(key: str) -> str:
    for pattern, replacement in _LEGACY_HF:
        key = pattern.sub(replacement, key)
    return key


def _merge_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pack `q/k/v_proj` back into `in_proj_weight/bias`, where the key was first met."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        split = _SPLIT.fullmatch(key)
        if split is None:
            out[key] = value
            continue
        parts = [state.get(f"{split['prefix']}.{x}_proj.{split['p']}") for x in "qkv"]
        if any(p is None for p in parts):
            out[key] = value  # incomplete: left for the strict check to name
        elif f"{split['prefix']}.in_proj_{split['p']}" not in out:
            out[f"{split['prefix']}.in_proj_{split['p']}"] = torch.cat([p for p in parts if p is not None])
    return out


def derived_buffers(name: str) -> dict[str, torch.Tensor]:
    """The buffers of variant `name` that follow from its config rather than from training."""
    variant = get_variant(name)
    shapes = [(int(variant.input_size / s), int(variant.input_size / s)) for s in FEAT_STRIDES]
    anchors, valid_mask = generate_anchors(shapes)
    out = {"decoder.anchors": anchors, "decoder.valid_mask": valid_mask}
    for key, shape in variant_signature(name).items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.int64)
        elif key.endswith("num_points_scale"):
            out[key] = torch.full(shape, 1.0 / (shape[0] // NUM_LEVELS), dtype=torch.float32)
    return out


def complete_official(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """`state` in variant `name`'s key order with the derived buffers it lacks regenerated.

    Keys the variant does not have stay (at the end), so the strict check can name them.
    """
    derived = derived_buffers(name)
    out = {}
    for key in variant_signature(name):
        if key in state:
            out[key] = state[key]
        elif key in derived:
            out[key] = derived[key]
    out.update({k: v for k, v in state.items() if k not in out})
    return out


def hf_config(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(RTDetrV2Config kwargs, RTDetrResNetConfig kwargs) of variant `name`."""
    variant = get_variant(name)
    block = BasicBlock if variant.depth < 50 else BottleNeck
    backbone = {
        **BACKBONE_FIXED_FIELDS,
        "layer_type": "basic" if block is BasicBlock else "bottleneck",
        "depths": list(STAGE_BLOCKS[variant.depth]),
        "hidden_sizes": [w * block.expansion for w in STAGE_WIDTHS],
    }
    top = {
        **FIXED_FIELDS,
        "num_labels": variant.num_classes,
        "encoder_in_channels": list(variant.encoder_in_channels),
        "encoder_hidden_dim": variant.encoder_hidden_dim,
        "encoder_ffn_dim": variant.encoder_ffn_dim,
        "hidden_expansion": variant.expansion,
        "decoder_layers": variant.decoder_layers,
        "decoder_in_channels": [variant.encoder_hidden_dim] * NUM_LEVELS,
        "decoder_method": variant.cross_attn_method,
    }
    return top, backbone


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _with_v1_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as a flat dict with `num_labels` resolved and v1's missing v2 fields filled in."""
    cfg = {k: _plain(v) for k, v in config.items()}
    if "num_labels" not in cfg and isinstance(cfg.get("id2label"), Mapping):
        cfg["num_labels"] = len(cfg["id2label"])
    if cfg.get("model_type") == HF_V1:
        cfg.setdefault("decoder_method", "default")
        cfg.setdefault("decoder_n_levels", cfg.get("num_feature_levels"))
        cfg.setdefault("decoder_offset_scale", 0.5)
    return cfg


def variant_of_hf_config(config: Mapping[str, Any], source: str = "checkpoint") -> str:
    """The rtq variant an HF RT-DETR config describes, or a one-line `UserError` saying why there is none."""
    cfg = _with_v1_defaults(config)
    if cfg.get("model_type") not in HF_MODEL_TYPES:
        raise UserError(
            f"{source}: config.json model_type {cfg.get('model_type')!r} is not RT-DETR; rtq reads "
            f"{' and '.join(HF_MODEL_TYPES)} checkpoints"
        )
    backbone = {k: _plain(v) for k, v in (cfg.get("backbone_config") or {}).items()}
    fixed = {**FIXED_FIELDS, "num_labels": RTDETRVariant.num_classes}
    wanted = [("", k, v, cfg.get(k)) for k, v in fixed.items()]
    wanted.append(("backbone_config.", "model_type", HF_BACKBONE_TYPE, backbone.get("model_type")))
    wanted += [("backbone_config.", k, v, backbone.get(k)) for k, v in BACKBONE_FIXED_FIELDS.items()]
    bad = [f"{where}{k}={got!r} (rtq: {want!r})" for where, k, want, got in wanted if got != want]
    if bad:
        raise UserError(
            f"{source} cannot be represented in rtq: {', '.join(bad)}; rtq runs the RT-DETR(v2) ResNet "
            f"COCO architectures only"
        )
    described = {k: cfg.get(k) for k in VARIANT_FIELDS}
    described |= {k: backbone.get(k) for k in BACKBONE_VARIANT_FIELDS}
    for name in VARIANTS:
        top, bb = hf_config(name)
        if all(described[k] == top[k] for k in VARIANT_FIELDS) and all(
            described[k] == bb[k] for k in BACKBONE_VARIANT_FIELDS
        ):
            return name
    shown = ", ".join(f"{k}={v!r}" for k, v in described.items())
    raise UserError(
        f"{source} describes no rtq variant ({shown}); rtq variants: {', '.join(sorted(VARIANTS))}"
    )


def check_hf_config(
    config: Mapping[str, Any], name: str, source: str = "checkpoint", asked_by: str = "model.name"
) -> None:
    """`UserError` in one line unless the HF config describes variant `name` (which `asked_by` set)."""
    found = variant_of_hf_config(config, source)
    if found != name:
        other = f" or model.checkpoint to a {name} checkpoint" if asked_by == "model.name" else ""
        raise UserError(
            f"{source} is a {found} checkpoint (its config.json) but {asked_by} is {name}; set "
            f"{asked_by}={found}{other}"
        )
