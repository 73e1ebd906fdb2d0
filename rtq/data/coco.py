"""COCO val2017-layout dataset: image list, decoding, and contiguous label <-> category id mapping.

Detectors predict contiguous labels 0..C-1 while COCO scores category ids 1..90 with gaps, so the
mapping lives here, next to the annotations it comes from (sorted category ids, the convention of
the RT-DETR and YOLOX releases).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from rtq.errors import UserError

log = logging.getLogger(__name__)

IMAGES_DIR = "val2017"
ANNOTATIONS_FILE = "annotations/instances_val2017.json"
EXPECTED_LAYOUT = f"ROOT/{IMAGES_DIR}/*.jpg and ROOT/{ANNOTATIONS_FILE}"


@contextlib.contextmanager
def pycocotools_output_to_debug_log() -> Iterator[None]:
    """pycocotools prints progress to stdout; keep the console clean and the text in the debug log."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            log.debug("pycocotools:\n%s", text)


@dataclass(frozen=True)
class CocoImage:
    """One evaluation image: its COCO id, where it lives and its original size."""

    image_id: int
    path: Path
    width: int
    height: int


class CocoDataset:
    """The images of a COCO-layout folder, optionally the first `max_images` by image id."""

    def __init__(self, root: Path | str, max_images: int | None = None) -> None:
        root = Path(root)
        if max_images is not None and max_images <= 0:
            raise UserError(
                f"max_images={max_images} must be a positive number of images (or null for all of them)"
            )
        annotations = root / ANNOTATIONS_FILE
        images_dir = root / IMAGES_DIR
        if not root.is_dir() or not annotations.is_file() or not images_dir.is_dir():
            raise UserError(
                f"COCO dataset not found at {root}: expected the layout {EXPECTED_LAYOUT}; "
                "point data.root at such a folder"
            )
        self.root = root
        with pycocotools_output_to_debug_log():
            self.coco = COCO(str(annotations))

        image_ids = sorted(self.coco.getImgIds())
        if max_images is not None:
            image_ids = image_ids[:max_images]
        self.image_ids: list[int] = image_ids
        self.images: list[CocoImage] = []
        for image_id in image_ids:
            record = self.coco.imgs[image_id]
            self.images.append(
                CocoImage(
                    image_id=image_id,
                    path=images_dir / record["file_name"],
                    width=int(record["width"]),
                    height=int(record["height"]),
                )
            )
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        self._label_to_category = np.asarray(self.category_ids, dtype=np.int64)
        self._category_to_label = {cat: label for label, cat in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> CocoImage:
        return self.images[index]

    def __iter__(self) -> Iterator[CocoImage]:
        return iter(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def load_image(self, image: CocoImage | int) -> np.ndarray:
        """Decode one image (a `CocoImage` or an index) to RGB uint8 HWC, grey and CMYK included."""
        item = self.images[image] if isinstance(image, int) else image
        return load_rgb(item.path)

    def label_to_category_id(self, labels: np.ndarray) -> np.ndarray:
        """Contiguous labels 0..C-1 -> COCO category ids; out-of-range labels are a model/data mismatch."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
            raise ValueError(
                f"labels must lie in 0..{len(self.category_ids) - 1} for this dataset's "
                f"{len(self.category_ids)} categories; got {labels.min()}..{labels.max()}"
            )
        return self._label_to_category[labels]

    def category_id_to_label(self, category_ids: np.ndarray) -> np.ndarray:
        """COCO category ids -> contiguous labels (the inverse of `label_to_category_id`)."""
        return np.asarray([self._category_to_label[int(c)] for c in np.ravel(category_ids)], dtype=np.int64)


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 HWC; a missing file is a user-visible data problem."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image file {path} is missing; restore the dataset folder") from None
