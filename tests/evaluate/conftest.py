"""Fixtures for evaluation tests: a few bundled COCO images and the tiny whole-image detector."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_detector import BUNDLED, full_image_detector_onnx

from rtq.data.coco import CocoDataset


@pytest.fixture(scope="session")
def small_dataset() -> CocoDataset:
    return CocoDataset(BUNDLED, max_images=7)


@pytest.fixture(scope="session")
def detector_onnx(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int | None], Path]:
    folder = tmp_path_factory.mktemp("onnx")

    def make(batch: int | None) -> Path:
        return full_image_detector_onnx(folder / f"full_image_b{batch or 'N'}.onnx", batch)

    return make
