"""Calibration images: a folder or a glob of plain images, batched with the detector's own preprocessing.

Calibration must see exactly the tensors evaluation feeds the network, so batching goes through the
same `DetectorIO.preprocess` rather than a separate transform.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from rtq.data.coco import load_rgb
from rtq.errors import UserError
from rtq.models.io import DetectorIO

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
FIX_HINT = "set data.calib.source=PATH to a folder of .jpg/.jpeg/.png/.bmp images or a glob"


def _is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def find_calibration_images(source: str | Path) -> list[Path]:
    """Image paths of a folder (recursive) or glob, sorted so calibration is reproducible."""
    text = str(source)
    if _is_glob(text):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not paths:
            raise UserError(f"calibration glob {text!r} matches no files; {FIX_HINT}")
        return paths
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"calibration folder {folder} does not exist; {FIX_HINT}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"calibration folder {folder} holds no .jpg/.jpeg/.png/.bmp images; {FIX_HINT}")
    return paths


class CalibrationImages:
    """The calibration set as decoded RGB uint8 HWC arrays, the first `max_images` in sorted order."""

    def __init__(self, source: str | Path, max_images: int | None = None) -> None:
        if max_images is not None and max_images <= 0:
            raise UserError(
                f"quant.calib.max_images={max_images} must be a positive number (or null for all images)"
            )
        self.source = source
        paths = find_calibration_images(source)
        self.paths: list[Path] = paths[:max_images] if max_images is not None else paths

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield load_rgb(path)


def calibration_batches(
    images: Iterable[np.ndarray], io: DetectorIO, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts of up to `batch_size` images each; the last batch is smaller when the count is uneven."""
    if batch_size <= 0:
        raise UserError(f"quant.calib.batch_size={batch_size} must be a positive number")
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            feed, _ = io.preprocess(batch)
            yield feed
            batch = []
    if batch:
        feed, _ = io.preprocess(batch)
        yield feed
