"""`python -m rtq.models.convert --to hf|official IN OUT`: official RT-DETRv2 weights <-> HF folders.

`--to hf` turns an official `.pth` into a folder `RTDetrV2ForObjectDetection.from_pretrained` loads
offline (config.json + model.safetensors, dtypes kept); `--to official` turns an HF folder or
`.safetensors` file (RT-DETR v2 or v1) into `{'ema': {'module': state_dict}}`. The variant comes from
the checkpoint (config.json, else the key/shape signature; a `_dsp` twin only by `--model`). Both
directions check the weights against the variant first, so no half-fitting file is written, and a
round trip gives back the same keys, dtypes and values.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from rtq.errors import UserError, exit_on_user_error
from rtq.files import atomic_target, write_atomic
from rtq.models.checkpoint import describe_mismatch, read_official_state_dict
from rtq.models.hf_checkpoint import CONFIG, WEIGHTS, is_hf_checkpoint, read_hf_checkpoint
from rtq.models.hf_keys import hf_config, official_to_hf
from rtq.models.registry import VARIANTS, construct, get_variant
from rtq.models.signature import variant_of_weights

HF_ARCHITECTURE = "RTDetrV2ForObjectDetection"


def check_fits(state: dict[str, torch.Tensor], name: str, source: Path) -> None:
    """`UserError` in one line unless `state` loads strictly into variant `name` (checked on meta)."""
    with torch.device("meta"):
        model = construct(VARIANTS[name])
    problem = describe_mismatch(model, state)
    if problem is not None:
        raise UserError(
            f"{source} does not fit {name}: {problem}; pass --model with the checkpoint's variant"
        )


def save_hf(hf_state: dict[str, torch.Tensor], name: str, out: Path) -> None:
    """Write `hf_state` and variant `name`'s config as a `save_pretrained`-style folder."""
    from safetensors.torch import save_file
    from transformers import RTDetrResNetConfig, RTDetrV2Config

    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is a file; --to hf writes a folder (config.json + {WEIGHTS})")
    top, backbone = hf_config(name)
    config = RTDetrV2Config(backbone_config=RTDetrResNetConfig(**backbone), **top)
    config.architectures = [HF_ARCHITECTURE]
    floats = Counter(v.dtype for v in hf_state.values() if v.is_floating_point())
    config.dtype = str(floats.most_common(1)[0][0]).removeprefix("torch.") if floats else "float32"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_target(out / WEIGHTS) as tmp:
        tensors = {k: v.detach().contiguous() for k, v in hf_state.items()}
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_atomic(out / CONFIG, config.to_json_string())


def to_hf(source: Path, out: Path, name: str | None = None) -> str:
    """Convert an official checkpoint file into an HF folder; returns the variant name."""
    if is_hf_checkpoint(source):
        raise UserError(
            f"{source} is already a Hugging Face checkpoint; use --to official to convert it back"
        )
    state = read_official_state_dict(source)
    name = name or variant_of_weights(state, str(source), "pass --model NAME")
    check_fits(state, name, source)
    save_hf(official_to_hf(state), name, out)
    return name


def to_official(source: Path, out: Path, name: str | None = None) -> str:
    """Convert an HF folder or `.safetensors` file into an official `.pth`; returns the variant name."""
    if not is_hf_checkpoint(source):
        raise UserError(
            f"{source} is not a Hugging Face checkpoint (a folder with {CONFIG} + {WEIGHTS}, or a "
            f".safetensors file); use --to hf to convert an official .pth"
        )
    checkpoint = read_hf_checkpoint(source, name, asked_by="--model")
    check_fits(checkpoint.state, checkpoint.variant, source)
    if out.is_dir():
        raise UserError(f"output {out} is a folder; --to official writes one .pth file")
    with atomic_target(out) as tmp:
        torch.save({"ema": {"module": checkpoint.state}}, tmp)
    return checkpoint.variant


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rtq.models.convert",
        description="Convert RT-DETRv2 weights between the official .pth layout and Hugging Face folders.",
    )
    parser.add_argument("--to", required=True, choices=("hf", "official"), help="the layout to write")
    parser.add_argument("--model", help="variant name (default: read from the checkpoint)")
    parser.add_argument("source", type=Path, help="official .pth, or HF folder / .safetensors file")
    parser.add_argument("out", type=Path, help="HF folder (--to hf) or .pth file (--to official)")
    args = parser.parse_args(argv)
    if args.model:
        get_variant(args.model)  # an unknown name fails in one line, before any reading
    convert = to_hf if args.to == "hf" else to_official
    variant = convert(args.source, args.out, args.model or None)
    print(f"wrote {args.out} ({variant}, {args.to} layout)")
    row = VARIANTS[variant]
    if args.to == "hf" and row.eval_idx not in (-1, row.decoder_layers - 1):
        print(
            f"note: transformers runs all {row.decoder_layers} decoder layers; the official {variant} "
            f"config (and rtq) returns layer {row.eval_idx + 1}, so outputs differ"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
