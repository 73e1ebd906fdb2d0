"""Results of runs: `results.json` per run directory and an append-only JSON-lines store.

Tables are rendered from the store, never typed by hand; the store is append-only so the history
of every experiment is kept and the latest line of a configuration is its current result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rtq.errors import UserError
from rtq.files import write_atomic

RESULTS_FILE = "results.json"


def write_results(run_dir: str | Path, row: dict[str, Any]) -> Path:
    """Write `row` to RUN_DIR/results.json atomically: a reader never sees a partial file."""
    text = json.dumps(row, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_atomic(Path(run_dir) / RESULTS_FILE, text, fsync=True)


def append_to_store(store_path: str | Path, row: dict[str, Any]) -> Path:
    """Append `row` as one JSON line, safe with concurrent writers (sweep jobs, cluster tasks).

    The append holds an exclusive lock on `<store>.lock` (filelock: fcntl on POSIX, which also works
    on most shared file systems) and is flushed to disk before the lock is released, so no row is
    lost and no reader sees half a line, whatever the row's size.
    """
    from filelock import FileLock

    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n"
    with FileLock(str(store_path) + ".lock"), open(store_path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return store_path


def load_store(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a store, oldest first; blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results store {path} does not exist; run an experiment first or pass --store PATH")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"results store {path} line {number} is not JSON ({err.msg}); fix or delete it"
                ) from None
            if not isinstance(row, dict):
                raise UserError(f"results store {path} line {number} is not a JSON object; fix or delete it")
            rows.append(row)
    return rows
