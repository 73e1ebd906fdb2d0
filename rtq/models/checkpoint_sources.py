"""Where weights come from: `model.checkpoint` is a path, `official`, `hf:<repo id>[@revision]` or a URL.

Every spec ends as a local path for `load_checkpoint`, so loading stays one code path. Downloads
land once in the checkpoint cache ($RTQ_CACHE_DIR/checkpoints, else ~/.cache/rtq/checkpoints) and
later runs use them without the network; Hugging Face folders live in the Hub's own cache (HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE apply). A mirror ($RTQ_CHECKPOINT_MIRROR or model.checkpoint_mirror)
serves the official files to tests and machines without GitHub access.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rtq.errors import UserError
from rtq.models.checkpoint_download import fetch_file, short_reason

OFFICIAL_RELEASES = "https://github.com/lyuwenyu/storage/releases/download"
# The COCO checkpoints of the model zoo tables in lyuwenyu/RT-DETR rtdetrv2_pytorch/README.md, by
# rtq variant; paths under OFFICIAL_RELEASES. The r34vd_dsp file name does begin with "rr".
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "rtdetrv2_r18vd": "v0.2/rtdetrv2_r18vd_120e_coco_rerun_48.1.pth",
    "rtdetrv2_r34vd": "v0.1/rtdetrv2_r34vd_120e_coco_ema.pth",
    "rtdetrv2_r50vd_m": "v0.1/rtdetrv2_r50vd_m_7x_coco_ema.pth",
    "rtdetrv2_r50vd": "v0.1/rtdetrv2_r50vd_6x_coco_ema.pth",
    "rtdetrv2_r101vd": "v0.1/rtdetrv2_r101vd_6x_coco_from_paddle.pth",
    "rtdetrv2_r18vd_dsp": "v0.1/rtdetrv2_r18vd_dsp_3x_coco.pth",
    "rtdetrv2_r34vd_dsp": "v0.1/rrtdetrv2_r34vd_dsp_1x_coco.pth",
    "rtdetrv2_r50vd_m_dsp": "v0.1/rtdetrv2_r50vd_m_dsp_3x_coco.pth",
    "rtdetrv2_r50vd_dsp": "v0.1/rtdetrv2_r50vd_dsp_1x_coco.pth",
}
OFFICIAL = "official"
HF_PREFIX = "hf:"
HF_FILES = ["config.json", "*.safetensors"]
CACHE_ENV = "RTQ_CACHE_DIR"
MIRROR_ENV = "RTQ_CHECKPOINT_MIRROR"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint on local disk: a file, or a Hugging Face model folder."""

    path: Path
    label: str  # what a result row records as the weights (a file name, or hf:<repo>@<commit>)


def resolve_checkpoint(
    spec: str | Path | None, name: str, mirror: str | None = None, cache_dir: Path | None = None
) -> ResolvedCheckpoint | None:
    """The local checkpoint that `spec` names for variant `name` (downloaded first if needed).

    None or "" mean no checkpoint (random weights); a `Path` is always taken as a path.
    """
    if spec is None or isinstance(spec, Path):
        return None if spec is None else ResolvedCheckpoint(spec, spec.name)
    text = str(spec).strip()
    if not text:
        return None
    cache = cache_dir or checkpoint_cache_dir()
    if text == OFFICIAL:
        url = official_url(name, mirror)
        return _downloaded(url, cache / url_file_name(url), _official_hint(url))
    if text.startswith(HF_PREFIX):
        return hugging_face_folder(text[len(HF_PREFIX) :])
    if text.startswith(("http://", "https://")):
        folder = cache / "urls" / hashlib.sha256(text.encode()).hexdigest()[:16]
        return _downloaded(text, folder / url_file_name(text), "download it and set model.checkpoint=PATH")
    path = Path(text).expanduser()
    return ResolvedCheckpoint(path, path.name)


def checkpoint_cache_dir() -> Path:
    """Where downloaded checkpoints are kept: $RTQ_CACHE_DIR/checkpoints, else the user's cache folder."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "checkpoints"
    user_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(user_cache).expanduser() / "rtq" / "checkpoints"


def official_url(name: str, mirror: str | None = None) -> str:
    """The official release URL of variant `name`'s COCO checkpoint, or its file on the mirror."""
    release = OFFICIAL_CHECKPOINTS.get(name)
    if release is None:
        known = ", ".join(sorted(OFFICIAL_CHECKPOINTS))
        raise UserError(
            f"model {name} has no official checkpoint (official ones: {known}); "
            f"set model.checkpoint=PATH or model.checkpoint=hf:<repo id>"
        )
    base = mirror or os.environ.get(MIRROR_ENV)
    if not base:
        return f"{OFFICIAL_RELEASES}/{release}"
    if not base.startswith(("http://", "https://")):
        source = "model.checkpoint_mirror" if mirror else MIRROR_ENV
        raise UserError(
            f"{source}={base!r} is not an http(s) URL; set it to the URL of a folder that holds the "
            f"official .pth files, or set model.checkpoint=PATH"
        )
    return f"{base.rstrip('/')}/{release.rsplit('/', 1)[-1]}"


def url_file_name(url: str) -> str:
    """The file name a URL ends in (what the cached copy is called)."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or "checkpoint.pth"


def _official_hint(url: str) -> str:
    return (
        f"download it elsewhere and set model.checkpoint=PATH, or set {MIRROR_ENV} to the URL of a "
        f"folder that holds {url_file_name(url)}"
    )


def _downloaded(url: str, dest: Path, hint: str) -> ResolvedCheckpoint:
    path = fetch_file(url, dest, hint)
    return ResolvedCheckpoint(path, path.name)


def hugging_face_folder(ref: str) -> ResolvedCheckpoint:
    """The local snapshot (config.json + *.safetensors) of `<repo id>[@revision]` on the Hugging Face Hub.

    huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE itself and serves a cached
    snapshot without the network when the Hub cannot be reached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = ref.partition("@")
    spec = f"model.checkpoint={HF_PREFIX}{ref}"
    if not repo_id.strip():
        raise UserError(f"{spec} names no repository; write {HF_PREFIX}<org>/<name>[@revision]")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=HF_FILES))
    except HFValidationError:
        raise UserError(
            f"{spec}: {repo_id!r} is not a Hugging Face repo id; write {HF_PREFIX}<org>/<name>[@revision]"
        ) from None
    except RevisionNotFoundError:
        missing_revision = f"{spec}: {repo_id} has no revision {revision!r}; name a branch, tag or commit"
        raise UserError(missing_revision) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{spec}: no repository {repo_id} on the Hugging Face Hub (or it is private or gated: log in "
            f"with `hf auth login`); check the repo id"
        ) from None
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code in (401, 403):
            refused = f"{spec}: the Hub refused access to {repo_id}; log in with `hf auth login`"
            raise UserError(refused) from None
        raise _hf_unreachable(spec, err) from None
    except OSError as err:  # not cached, and offline or unreachable
        raise _hf_unreachable(spec, err) from None
    missing = [pattern for pattern in HF_FILES if not any(folder.glob(pattern))]
    if missing:
        raise UserError(
            f"{spec}: the snapshot {folder} has no {' or '.join(missing)}; an RT-DETRv2 checkpoint in "
            f"transformers format has config.json and model.safetensors"
        )
    return ResolvedCheckpoint(folder, f"{HF_PREFIX}{repo_id}@{folder.name[:12]}")


def _hf_unreachable(spec: str, err: BaseException) -> UserError:
    from huggingface_hub import constants

    reason = short_reason(err.__cause__ or err)
    why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else f"the Hub is unreachable ({reason})"
    return UserError(
        f"cannot get {spec}: it is not in the Hugging Face cache {constants.HF_HUB_CACHE} and {why}; run "
        f"once with network access, or put the model folder on disk and set model.checkpoint=PATH"
    )
