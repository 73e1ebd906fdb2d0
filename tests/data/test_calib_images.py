"""Calibration image discovery, decoding and batching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rtq.data.calib import CalibrationImages, calibration_batches, find_calibration_images
from rtq.errors import UserError
from rtq.models.io import Detections, ImageMeta

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "coco_calib"


class MeanColourIO:
    """A minimal DetectorIO: each image becomes its mean colour, so batches are easy to check."""

    input_size: int = 1
    input_names: tuple[str, ...] = ("images",)

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        means = np.stack([img.reshape(-1, 3).mean(axis=0) for img in images]).astype(np.float32)
        metas = [ImageMeta(width=img.shape[1], height=img.shape[0]) for img in images]
        return {"images": means}, metas

    def postprocess(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        raise NotImplementedError


def _write(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (5, 3), colour).convert(mode).save(path)


def test_bundled_calibration_set() -> None:
    images = CalibrationImages(BUNDLED, max_images=3)
    assert len(CalibrationImages(BUNDLED)) == 128
    decoded = list(images)
    assert len(decoded) == 3
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for img in decoded)


def test_folder_is_searched_recursively_for_images_only(tmp_path: Path) -> None:
    _write(tmp_path / "a.jpg", (10, 10, 10))
    _write(tmp_path / "sub" / "b.PNG", (20, 20, 20))
    _write(tmp_path / "sub" / "deeper" / "c.bmp", (30, 30, 30), mode="L")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = find_calibration_images(tmp_path)
    assert [p.name for p in paths] == ["a.jpg", "b.PNG", "c.bmp"]
    assert all(img.shape == (3, 5, 3) for img in CalibrationImages(tmp_path))


def test_glob_source(tmp_path: Path) -> None:
    _write(tmp_path / "x1.png", (1, 2, 3))
    _write(tmp_path / "x2.png", (1, 2, 3))
    _write(tmp_path / "y.png", (1, 2, 3))
    assert len(CalibrationImages(str(tmp_path / "x*.png"))) == 2


@pytest.mark.parametrize(
    "make_source, expected",
    [
        (lambda p: p, "holds no"),
        (lambda p: p / "missing", "does not exist"),
        (lambda p: str(p / "*.jpg"), "matches no files"),
    ],
    ids=["empty-folder", "missing-folder", "empty-glob"],
)
def test_bad_sources_name_the_source_and_the_fix(tmp_path: Path, make_source: Any, expected: str) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    source = make_source(tmp_path)
    with pytest.raises(UserError) as err:
        CalibrationImages(source)
    assert expected in str(err.value)
    assert str(source) in str(err.value)
    assert "data.calib.source=PATH" in str(err.value)


def test_max_images_must_be_positive() -> None:
    with pytest.raises(UserError, match="max_images=0"):
        CalibrationImages(BUNDLED, max_images=0)


def test_batches_use_the_detector_preprocessing_and_keep_the_remainder(tmp_path: Path) -> None:
    for i in range(5):
        _write(tmp_path / f"{i}.png", (i * 10, i * 10, i * 10))
    io = MeanColourIO()
    batches = list(calibration_batches(CalibrationImages(tmp_path), io, batch_size=2))
    assert [b["images"].shape[0] for b in batches] == [2, 2, 1]
    stacked = np.concatenate([b["images"] for b in batches])
    expected, _ = io.preprocess(list(CalibrationImages(tmp_path)))
    np.testing.assert_array_equal(stacked, expected["images"])
    np.testing.assert_allclose(stacked[:, 0], [0, 10, 20, 30, 40])
    with pytest.raises(UserError, match="batch_size=0"):
        next(calibration_batches(CalibrationImages(tmp_path), io, batch_size=0))
