"""Content-addressed cache for expensive artifacts (calibrated ONNX, engines).

A key is a hash of everything that determines the artifact (settings and input file bytes), so
re-running an experiment with a changed comparison setting reuses the calibrated model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtq.files import atomic_target


def file_digest(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes; of a folder (a saved Hugging Face model), of its files' relative
    names and digests, so the same weights under another folder name key the same."""
    if Path(path).is_dir():
        root = Path(path)
        listing = [(str(f.relative_to(root)), file_digest(f)) for f in sorted(root.rglob("*")) if f.is_file()]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """Stable short hash of JSON-serialisable settings (paths given as file digests by the caller)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def code_digest(folders: tuple[str, ...] = ("models", "quant", "export")) -> str:
    """Digest of the rtq code that shapes a calibrated export, so edited code misses the cache."""
    from rtq.paths import PROJECT_ROOT

    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((PROJECT_ROOT / "rtq" / folder).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ArtifactCache:
    """A folder of cached artifacts, one sub-folder per key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def lookup(self, kind: str, key: str, filename: str) -> Path | None:
        path = self.root / kind / key / filename
        return path if path.is_file() else None

    def fetch_or_make(
        self, kind: str, key: str, filename: str, make: Callable[[Path], object]
    ) -> tuple[Path, bool]:
        """The cached `kind/key/filename`, made first (into a temporary folder) when missing; and
        whether it was a hit. Side files `make` writes beside it are kept too, stored first, so a
        present `filename` means a complete entry."""
        found = self.lookup(kind, key, filename)
        if found is not None:
            return found, True
        with tempfile.TemporaryDirectory(prefix="rtq-cache-") as tmp:
            path = Path(tmp) / filename
            make(path)
            for side in sorted(Path(tmp).iterdir()):
                if side != path and side.is_file():
                    self.store(kind, key, side)
            return self.store(kind, key, path), False

    def store(self, kind: str, key: str, source: Path, filename: str | None = None) -> Path:
        """Copy `source` into the cache atomically and return the cached path."""
        target_dir = self.root / kind / key
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / (filename or source.name)
        with atomic_target(target) as tmp:
            shutil.copyfile(source, tmp)
        return target
