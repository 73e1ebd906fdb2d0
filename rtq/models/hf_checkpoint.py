"""Reading Hugging Face RT-DETR checkpoints (`save_pretrained` folders, `.safetensors` files) as rtq weights.

The config.json beside the weights says which variant they are; it is checked against the variant the
user configured before any weights are read, so a wrong pairing fails in one line naming both. Weights
come back in the official layout (`rtq.models.hf_keys`), with the derived buffers HF does not store
regenerated, ready for the same strict check as an official `.pth`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rtq.errors import UserError
from rtq.models.hf_keys import (
    HF_MODEL_TYPES,
    check_hf_config,
    complete_official,
    hf_to_official,
    is_hf_layout,
    variant_of_hf_config,
)
from rtq.models.signature import variant_of_weights

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
HF_HINT = "a Hugging Face RT-DETR checkpoint is a folder with config.json and model.safetensors"


class HFCheckpoint(NamedTuple):
    """Official-layout weights of an HF checkpoint and the rtq variant they are for."""

    state: dict[str, torch.Tensor]
    variant: str


def is_hf_checkpoint(path: str | Path) -> bool:
    """True for a folder holding config.json or safetensors weights, or for a `.safetensors` file."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in (CONFIG, WEIGHTS, WEIGHTS_INDEX))
    return path.suffix == ".safetensors"


def _config_file(path: Path) -> Path | None:
    folder = path if path.is_dir() else path.parent
    return folder / CONFIG if (folder / CONFIG).is_file() else None


def read_hf_config(path: str | Path) -> dict[str, Any] | None:
    """The RT-DETR config.json beside `path` as a flat dict with transformers' defaults filled in.

    None when there is none (a bare `.safetensors` file). transformers reads the file, so fields an
    older or newer config omits get the installed version's defaults.
    """
    file = _config_file(Path(path))
    if file is None:
        return None
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{file} is not a readable JSON config ({type(err).__name__}); {HF_HINT}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in HF_MODEL_TYPES:
        raise UserError(
            f"{file}: model_type {model_type!r} is not RT-DETR; rtq reads {' and '.join(HF_MODEL_TYPES)} "
            f"checkpoints (RTDetrV2ForObjectDetection, RTDetrForObjectDetection)"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(file.parent)
    except (OSError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{file} is not a valid {model_type} config: {first}") from None
    flat: dict[str, Any] = config.to_dict()  # backbone_config nested; num_labels follows from id2label
    return flat


def _weight_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    if (path / WEIGHTS_INDEX).is_file():
        try:
            shards = json.loads((path / WEIGHTS_INDEX).read_text())["weight_map"].values()
        except (OSError, ValueError, KeyError, AttributeError):
            raise UserError(f"{path / WEIGHTS_INDEX} is not a safetensors index; {HF_HINT}") from None
        return [path / shard for shard in sorted(set(shards))]
    raise UserError(f"checkpoint folder {path} has no {WEIGHTS}; {HF_HINT}")


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an HF checkpoint as stored (HF key names, stored dtypes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(path)):
        if not file.is_file():
            raise UserError(f"checkpoint {file} does not exist; {HF_HINT}")
        try:
            state.update(load_file(file))
        except (SafetensorError, OSError, ValueError) as err:
            why = "an empty file" if file.stat().st_size == 0 else f"{type(err).__name__}"
            raise UserError(f"checkpoint {file} is not a safetensors file ({why}); {HF_HINT}") from None
    return state


def read_hf_checkpoint(
    path: str | Path, name: str | None = None, asked_by: str = "model.name"
) -> HFCheckpoint:
    """Official-layout weights of the HF checkpoint at `path`, checked against variant `name` if given.

    `asked_by` is the setting that chose `name`, for the error message.

    The variant comes from config.json; without one, from the weights' key/shape signature (the
    default-sampling twin when only a `_dsp` flag would differ) unless `name` says.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; {HF_HINT}")
    config = read_hf_config(path)
    if config is not None:
        if name is None:
            name = variant_of_hf_config(config, str(path))
        else:
            check_hf_config(config, name, str(path), asked_by)
    stored = read_hf_weights(path)
    state = hf_to_official(stored, str(path)) if is_hf_layout(stored) else dict(stored)
    if name is None:
        name = variant_of_weights(
            state, f"checkpoint {path}", "put its config.json beside it or name the variant"
        )
    return HFCheckpoint(complete_official(state, name), name)
