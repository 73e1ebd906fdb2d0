"""Per-image detections written as they are made, so an interrupted COCO evaluation continues.

A full COCO val2017 run (5,000 images) takes long enough on a CPU that a crash, a pre-empted cluster
job or Ctrl-C should not cost it all. The evaluation appends each image's COCO detections to a JSON
lines file under the cache folder, named by a key over everything that decides the detections (the
model file, the backend settings, the dataset, the score threshold); a rerun of the same command
reads the images already done and runs only the rest. The file is removed once the evaluation
completes, so a rerun after a finished one measures the speed again instead of replaying results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DetectionsCache:
    """`<folder>/<key>.jsonl`: a header line with the key, then one line per finished image."""

    def __init__(self, folder: Path, key: str) -> None:
        self.path = Path(folder) / f"{key}.jsonl"
        self.key = key
        self._handle: Any = None

    def load(self) -> dict[int, list[dict[str, Any]]]:
        """Detections per image id already made by an interrupted run of the same key (else {})."""
        if not self.path.is_file():
            return {}
        done: dict[int, list[dict[str, Any]]] = {}
        with open(self.path, encoding="utf-8") as handle:
            header = handle.readline()
            try:
                if json.loads(header).get("key") != self.key:
                    return {}
            except (json.JSONDecodeError, AttributeError):
                return {}
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by the interruption: everything before it counts
                done[int(entry["image_id"])] = list(entry["detections"])
        if done:
            log.info("resuming the evaluation: %d images already done (%s)", len(done), self.path)
        return done

    def open(self, done: dict[int, list[dict[str, Any]]]) -> None:
        """Start writing: rewrite the file with the header and what `load` kept (drops a cut line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._handle.write(json.dumps({"key": self.key}) + "\n")
        for image_id, detections in done.items():
            self._write(image_id, detections)
        self._handle.flush()

    @contextlib.contextmanager
    def session(self, done: dict[int, list[dict[str, Any]]]) -> Iterator[DetectionsCache]:
        """`open`, and close on any exit keeping the file: only `close(completed=True)` removes it."""
        self.open(done)
        try:
            yield self
        finally:
            self.close(completed=False)

    def add(self, image_id: int, detections: list[dict[str, Any]]) -> None:
        self._write(image_id, detections)
        self._handle.flush()

    def _write(self, image_id: int, detections: list[dict[str, Any]]) -> None:
        self._handle.write(json.dumps({"image_id": image_id, "detections": detections}) + "\n")

    def close(self, completed: bool) -> None:
        """Close; a completed evaluation removes the file (nothing left to resume)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if completed:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
