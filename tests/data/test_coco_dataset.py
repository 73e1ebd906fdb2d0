"""CocoDataset on the bundled COCO val2017 subset and on small layouts built in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtq.data.coco import CocoDataset
from rtq.errors import UserError

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "coco_val2017_mini"


@pytest.fixture(scope="module")
def dataset() -> CocoDataset:
    return CocoDataset(BUNDLED)


def test_bundled_dataset_lists_every_image_sorted_with_sizes(dataset: CocoDataset) -> None:
    assert len(dataset) == 80
    assert dataset.image_ids == sorted(dataset.image_ids)
    first = dataset[0]
    record = dataset.coco.imgs[first.image_id]
    assert (first.width, first.height) == (record["width"], record["height"])
    assert first.path == BUNDLED / "val2017" / record["file_name"]


def test_category_mapping_is_sorted_ids_and_invertible(dataset: CocoDataset) -> None:
    assert dataset.num_classes == 80
    assert dataset.category_ids == sorted(dataset.coco.getCatIds())
    mapped = dataset.label_to_category_id(np.array([0, 1, 79]))
    assert mapped.tolist() == [1, 2, 90]
    assert dataset.category_id_to_label(mapped).tolist() == [0, 1, 79]
    with pytest.raises(ValueError, match="0..79"):
        dataset.label_to_category_id(np.array([80]))


def test_load_image_returns_rgb_uint8_of_the_recorded_size(dataset: CocoDataset) -> None:
    image = dataset.load_image(dataset[3])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == (dataset[3].height, dataset[3].width)
    assert np.array_equal(dataset.load_image(3), image)


def test_max_images_keeps_the_smallest_ids(dataset: CocoDataset) -> None:
    subset = CocoDataset(BUNDLED, max_images=5)
    assert subset.image_ids == dataset.image_ids[:5]
    assert [item.image_id for item in subset] == subset.image_ids


@pytest.mark.parametrize("bad", [0, -3])
def test_max_images_must_be_positive(bad: int) -> None:
    with pytest.raises(UserError, match=f"max_images={bad}"):
        CocoDataset(BUNDLED, max_images=bad)


def test_wrong_root_names_the_path_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        CocoDataset(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert "val2017" in message and "instances_val2017.json" in message


def _tiny_layout(root: Path, mode: str) -> None:
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new(mode, (6, 4), color=128 if mode == "L" else (0, 0, 0, 255)).save(root / "val2017" / "1.jpg")
    gt = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 6, "height": 4}],
        "annotations": [],
        "categories": [{"id": 3, "name": "car"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_images_decode_to_rgb(tmp_path: Path, mode: str) -> None:
    _tiny_layout(tmp_path, mode)
    dataset = CocoDataset(tmp_path)
    image = dataset.load_image(0)
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8


def test_missing_image_file_is_a_user_error(tmp_path: Path) -> None:
    _tiny_layout(tmp_path, "L")
    (tmp_path / "val2017" / "1.jpg").unlink()
    with pytest.raises(UserError, match="1.jpg"):
        CocoDataset(tmp_path).load_image(0)
