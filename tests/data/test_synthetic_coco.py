"""A large COCO-layout set from the bundled one: same images and annotations under new ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.data.coco import CocoDataset
from rtq.data.synthetic_coco import make_synthetic_coco
from rtq.errors import UserError
from rtq.paths import data_dir


def test_entries_cycle_through_the_source_with_their_annotations(tmp_path: Path) -> None:
    source = data_dir("coco_val2017_mini")
    if source is None:
        pytest.skip("the coco_val2017_mini images are missing")
    original = CocoDataset(source)
    large = CocoDataset(make_synthetic_coco(source, tmp_path / "coco", 2 * len(original) + 5))
    assert len(large) == 2 * len(original) + 5 and large.image_ids[0] == 1
    first, again = large.images[0], large.images[len(original)]
    assert first.path.resolve() == again.path.resolve() == original.images[0].path.resolve()
    count = len(original.coco.getAnnIds(imgIds=[original.image_ids[0]]))
    assert (
        len(large.coco.getAnnIds(imgIds=[first.image_id]))
        == len(large.coco.getAnnIds(imgIds=[again.image_id]))
        == count
    )
    with pytest.raises(UserError, match="no COCO annotations"):
        make_synthetic_coco(tmp_path / "missing", tmp_path / "x", 3)
