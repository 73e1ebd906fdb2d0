"""`model.checkpoint=official | hf:<repo> | URL | PATH`: resolved to a local file or folder, offline.

A loopback server stands in for the GitHub release (through the mirror setting) and serves a
random-weight r18vd checkpoint in the official layout; the Hugging Face cases run in a child
process with HF_HUB_OFFLINE=1 against a hub cache built here, since huggingface_hub reads its
environment once, at import.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loopback_http import LoopbackServer, closed_port_url

from rtq.errors import UserError
from rtq.models.build import build_model
from rtq.models.checkpoint_sources import (
    MIRROR_ENV,
    OFFICIAL_CHECKPOINTS,
    OFFICIAL_RELEASES,
    official_url,
    resolve_checkpoint,
)
from rtq.models.families.rtdetr import RTDETRFamily
from rtq.models.registry import VARIANTS
from rtq.paths import PROJECT_ROOT

R18 = "rtdetrv2_r18vd"
R18_FILE = "rtdetrv2_r18vd_120e_coco_rerun_48.1.pth"
PROGRESS = re.compile(rf"{re.escape(R18_FILE)}: 100%\|#+\| ([\d.]+)M/\1M \[[\d:]+<[\d:]+, +[\d.]+[kMG]?B/s\]")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def r18_release() -> tuple[bytes, dict[str, torch.Tensor]]:
    """Bytes of a random-weight r18vd checkpoint as released ({'ema': {'module': ...}}, float16)."""
    torch.manual_seed(3)
    state = build_model(R18).state_dict()
    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save({"ema": {"module": half}}, buffer)
    return buffer.getvalue(), half


@pytest.fixture
def mirror_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "rtq-cache"
    monkeypatch.setenv("RTQ_CACHE_DIR", str(cache))
    return cache / "checkpoints"


def test_official_downloads_once_with_progress_then_loads_from_the_cache(
    r18_release: tuple[bytes, dict[str, torch.Tensor]],
    mirror_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, half = r18_release
    with LoopbackServer({f"/releases/{R18_FILE}": data}) as server:
        monkeypatch.setenv(MIRROR_ENV, f"{server.url}/releases/")
        detector = RTDETRFamily().load({"name": R18, "checkpoint": "official"})
        assert server.requests == [(f"/releases/{R18_FILE}", None)]
        assert PROGRESS.search(capsys.readouterr().err)
        assert detector.weights == R18_FILE
        assert detector.settings["checkpoint"] == str(mirror_env / R18_FILE)
        assert (mirror_env / R18_FILE).read_bytes() == data

        with caplog.at_level(logging.INFO, logger="rtq.models"):
            again = resolve_checkpoint("official", R18)
        assert server.requests == [(f"/releases/{R18_FILE}", None)]  # the second run asked nothing
    assert again is not None and again.path == mirror_env / R18_FILE
    assert f"cache hit {mirror_env / R18_FILE} (no download)" in caplog.text
    assert "100%" not in capsys.readouterr().err
    loaded = detector.torch_model.state_dict()["model.decoder.enc_score_head.weight"]
    torch.testing.assert_close(loaded, half["decoder.enc_score_head.weight"].float())


def test_an_interrupted_official_download_resumes_and_loads_strictly(
    r18_release: tuple[bytes, dict[str, torch.Tensor]], mirror_env: Path
) -> None:
    data, _ = r18_release
    cut = len(data) // 3
    with LoopbackServer({f"/{R18_FILE}": data}, drops=[cut]) as server:
        model = build_model(R18, f"{server.url}/{R18_FILE}")
    assert server.requests == [(f"/{R18_FILE}", None), (f"/{R18_FILE}", f"bytes={cut}-")]
    cached = list((mirror_env / "urls").glob(f"*/{R18_FILE}"))
    assert len(cached) == 1 and cached[0].read_bytes() == data
    assert not model.training


def test_every_variant_has_an_official_release_and_other_names_fail_in_one_line() -> None:
    assert set(OFFICIAL_CHECKPOINTS) == set(VARIANTS)
    for name in VARIANTS:
        url = official_url(name)
        assert url.startswith(f"{OFFICIAL_RELEASES}/v0.") and url.endswith(".pth"), url
        assert official_url(name, mirror="http://host/m/") == f"http://host/m/{url.rsplit('/', 1)[1]}"
    with pytest.raises(UserError, match=r"^model rtdetrv2_r200 has no official checkpoint \(official ones: "):
        official_url("rtdetrv2_r200")
    with pytest.raises(UserError, match=r"^model.checkpoint_mirror='/srv/w' is not an http\(s\) URL"):
        official_url(R18, mirror="/srv/w")


def test_plain_paths_and_no_checkpoint_pass_through(tmp_path: Path) -> None:
    assert resolve_checkpoint(None, R18) is None and resolve_checkpoint("", R18) is None
    resolved = resolve_checkpoint(str(tmp_path / "w.pth"), R18)
    assert resolved is not None and resolved.path == tmp_path / "w.pth" and resolved.label == "w.pth"
    official_named_file = resolve_checkpoint(tmp_path / "official", R18)
    assert official_named_file is not None and official_named_file.path == tmp_path / "official"


def test_an_unreachable_release_ends_rtq_run_in_one_line(tmp_path: Path) -> None:
    mirror = closed_port_url()
    env = {**os.environ, MIRROR_ENV: mirror, "RTQ_CACHE_DIR": str(tmp_path / "rtq-cache")}
    command = [
        sys.executable, "-m", "rtq.run", "model.checkpoint=official", "stages=[export]",
        f"hydra.run.dir={tmp_path / 'run'}", f"results.store={tmp_path / 'store.jsonl'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot download {mirror}/{R18_FILE} (Connection refused): offline or unreachable; "
        f"download it elsewhere and set model.checkpoint=PATH, or set {MIRROR_ENV} to the URL of a "
        f"folder that holds {R18_FILE}"
    ]
    left = [p for p in (tmp_path / "rtq-cache").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert left == []


def hf_cache(hub: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """A Hugging Face hub cache entry as huggingface_hub writes it: blobs, a snapshot of links, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


RESOLVE = """
import json, sys
from rtq.errors import UserError
from rtq.models.checkpoint_sources import resolve_checkpoint
found = {}
for spec in sys.argv[1:]:
    try:
        resolved = resolve_checkpoint(spec, "rtdetrv2_r18vd")
        found[spec] = [str(resolved.path), resolved.label]
    except UserError as err:
        found[spec] = ["error", str(err)]
print(json.dumps(found))
"""


def resolve_offline(hub: Path, *specs: str, code: str = RESOLVE) -> dict[str, list[str]]:
    """`resolve_checkpoint` of each spec in a child process with HF_HUB_OFFLINE=1 and this hub cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "HF_HOME": str(hub.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *specs], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hf_repo_resolves_to_its_cached_snapshot_offline(tmp_path: Path) -> None:
    hub = tmp_path / "hf" / "hub"
    snapshot = hf_cache(hub, "org/name", {"config.json": b"{}", "model.safetensors": b"weights"})
    hf_cache(hub, "org/nosafetensors", {"config.json": b"{}", "pytorch_model.bin": b"weights"})
    specs = ("hf:org/name", f"hf:org/name@{COMMIT}", "hf:org/missing", "hf:org/nosafetensors")
    found = resolve_offline(hub, *specs)
    assert found["hf:org/name"] == [str(snapshot), f"hf:org/name@{COMMIT[:12]}"]
    assert found[f"hf:org/name@{COMMIT}"] == found["hf:org/name"]
    assert found["hf:org/missing"] == [
        "error",
        f"cannot get model.checkpoint=hf:org/missing: it is not in the Hugging Face cache {hub} and "
        f"HF_HUB_OFFLINE=1; run once with network access, or put the model folder on disk and set "
        f"model.checkpoint=PATH",
    ]
    assert found["hf:org/nosafetensors"] == [
        "error",
        f"model.checkpoint=hf:org/nosafetensors: the snapshot {hub}/models--org--nosafetensors/snapshots/"
        f"{COMMIT} has no *.safetensors; an RT-DETRv2 checkpoint in transformers format has config.json "
        f"and model.safetensors",
    ]


def test_the_resolved_snapshot_of_a_transformers_model_loads_strictly(tmp_path: Path) -> None:
    pytest.importorskip("rtq.models.hf_checkpoint", reason="rtq cannot load RTDetrV2 folders yet")
    transformers = pytest.importorskip("transformers")
    config = transformers.RTDetrV2Config(
        num_labels=80, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3
    )
    config.backbone_config.hidden_sizes = [64, 128, 256, 512]
    config.backbone_config.depths = [2, 2, 2, 2]
    config.backbone_config.layer_type = "basic"
    torch.manual_seed(0)
    hf_model = transformers.RTDetrV2ForObjectDetection(config)
    saved = tmp_path / "saved"
    hf_model.save_pretrained(saved)
    hub = tmp_path / "hf" / "hub"
    hf_cache(hub, "org/r18", {p.name: p.read_bytes() for p in saved.iterdir()})
    folder, label = resolve_offline(hub, "hf:org/r18")["hf:org/r18"]
    assert label == f"hf:org/r18@{COMMIT[:12]}"
    model = build_model(R18, folder)
    ours, theirs = model.state_dict(), hf_model.state_dict()
    torch.testing.assert_close(ours["decoder.enc_score_head.weight"], theirs["model.enc_score_head.weight"])
