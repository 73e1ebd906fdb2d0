"""Writing files so that a reader never sees half of one: the one home of write-then-rename.

`atomic_target(path)` hands out a temporary name beside `path` and renames it over `path` only when
the block succeeds (the temporary is removed otherwise); `write_atomic` and `save_onnx_atomic` are
the two common uses. Every writer in rtq goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ONNX_PROTO_LIMIT = 2_000_000_000 - 1  # larger models keep their weights in external data


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over it when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes, fsync: bool = False) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def save_onnx_atomic(model: Any, path: str | Path) -> Path:
    """`onnx.save` through a temporary name (external data beside it for models over 2 GB)."""
    import onnx

    path = Path(path)
    large = model.ByteSize() > ONNX_PROTO_LIMIT
    with atomic_target(path) as tmp:
        location = f"{path.name}.data" if large else None
        onnx.save(model, str(tmp), save_as_external_data=large, location=location)
    return path
