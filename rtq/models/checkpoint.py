"""Loading RT-DETRv2 checkpoints strictly, with one-line errors that say what went wrong.

Released files hold `{'ema': {'module': state_dict}}` (float16 or float32); training snapshots hold
`{'model': state_dict}`; a bare state dict is accepted too. A Hugging Face RT-DETR folder (config.json
+ model.safetensors) or `.safetensors` file is read by `rtq.models.hf_checkpoint` into the same
official layout, its config checked against the configured variant. A checkpoint for another variant
is recognised by comparing its key/shape signature with every known variant's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtq.errors import UserError
from rtq.models.hf_checkpoint import is_hf_checkpoint, read_hf_checkpoint
from rtq.models.signature import closest_variants, first_keys, variant_signature

__all__ = [
    "RELEASES_HINT",
    "closest_variants",
    "describe_mismatch",
    "extract_state_dict",
    "load_checkpoint",
    "read_official_state_dict",
    "read_state_dict",
    "unreadable_checkpoint",
    "variant_signature",
]

log = logging.getLogger(__name__)

RELEASES_HINT = (
    "official RT-DETRv2 weights are published in the lyuwenyu/RT-DETR GitHub releases "
    "(rtdetrv2_*.pth); download one and set model.checkpoint=PATH"
)


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint object (EMA weights preferred)."""
    if isinstance(obj, dict):
        ema = obj.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
            return ema["module"]
        if isinstance(obj.get("model"), dict):
            return obj["model"]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserError(
        f"checkpoint {path} holds no state dict (expected {{'ema': {{'module': ...}}}}, "
        f"{{'model': ...}} or a bare state dict); {RELEASES_HINT}"
    )


def unreadable_checkpoint(path: Path, err: Exception) -> UserError:
    """The one-line error for a file `torch.load` refused.

    torch's own messages run to many lines (the `weights_only` advice) and say nothing useful
    about a file that is simply not a checkpoint, so only a refused class is quoted from them.
    """
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if refused:
        return UserError(
            f"checkpoint {path} holds a {refused.group(1)} object besides tensors, which rtq does not "
            f"unpickle (it could run code): save only its state dict with torch.save, or use an "
            f"official checkpoint; {RELEASES_HINT}"
        )
    what = "an empty file" if path.stat().st_size == 0 else "another kind of file, or a truncated one"
    return UserError(
        f"checkpoint {path} is not a PyTorch checkpoint ({what}); expected an RT-DETRv2 .pth: {RELEASES_HINT}"
    )


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official-layout `.pth` file, dtypes as stored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; {RELEASES_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file for the user
        raise unreadable_checkpoint(path, err) from None
    return extract_state_dict(obj, path)


def read_state_dict(path: str | Path, name: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint (official `.pth` or HF folder/file); float16 tensors come back as float32.

    For an HF checkpoint, `name` is the variant its config.json must describe.
    """
    path = Path(path)
    if is_hf_checkpoint(path):
        state = read_hf_checkpoint(path, name).state
    elif path.is_dir():
        raise UserError(
            f"checkpoint {path} is a folder without config.json or model.safetensors; {RELEASES_HINT}, "
            f"or set it to a Hugging Face RT-DETR folder"
        )
    else:
        state = read_official_state_dict(path)
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` cannot load strictly into `model`, led by the variants it looks like; None if it can."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    frozen_extra = {  # FrozenBatchNorm2d drops these on load
        k
        for k in state
        if k.endswith("num_batches_tracked")
        and k not in expected
        and k.rsplit(".", 1)[0] + ".running_var" in expected
    }
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in frozen_extra]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing keys: {first_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {first_keys(unexpected)}")
    if mismatched:
        k = mismatched[0]
        more = f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        parts.append(f"shape mismatch: {k} {list(state[k].shape)} vs {list(expected[k])}{more}")
    if not parts:
        return None
    guess = " or ".join(closest_variants({k: tuple(v.shape) for k, v in state.items()}))
    return "; ".join([f"it looks like {guess}", *parts])


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load `path` into `model` (variant `name`) strictly; `UserError` in one line if it does not fit."""
    state = read_state_dict(path, name)
    problem = describe_mismatch(model, state)
    if problem is not None:
        raise UserError(
            f"checkpoint {path} does not fit model {name}: {problem}. "
            f"Set model.name to the checkpoint's variant or model.checkpoint to a {name} checkpoint"
        )
    model.load_state_dict(state, strict=True)
    log.info("model %s: loaded checkpoint %s", name, path)
