"""A COCO-layout folder of any size made from a small one: for measuring evaluation at scale.

Entry i of the new set is image `i mod n` of the source, linked (not copied) under a new file name,
with that image's annotations under new ids, so COCOeval scores it like the original and the folder
costs no disk space. The bundled 80 images become 2,000 or 5,000 entries, the size of COCO val2017.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rtq.data.coco import ANNOTATIONS_FILE, IMAGES_DIR
from rtq.errors import UserError


def make_synthetic_coco(source: Path, target: Path, count: int) -> Path:
    """Write `count` entries cycling through `source`'s images into `target` (COCO layout)."""
    source, target = Path(source), Path(target)
    annotations_file = source / ANNOTATIONS_FILE
    if not annotations_file.is_file():
        raise UserError(
            f"no COCO annotations at {annotations_file}: point the source at a COCO-layout folder"
        )
    if count <= 0:
        raise UserError(f"count={count} must be a positive number of images")
    data = json.loads(annotations_file.read_text())
    images = sorted(data["images"], key=lambda record: record["id"])
    by_image: dict[int, list[dict[str, object]]] = {}
    for annotation in data.get("annotations", []):
        by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
    (target / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (target / ANNOTATIONS_FILE).parent.mkdir(parents=True, exist_ok=True)
    out_images: list[dict[str, object]] = []
    out_annotations: list[dict[str, object]] = []
    for index in range(count):
        record = images[index % len(images)]
        name = f"{index + 1:012d}.jpg"
        link = target / IMAGES_DIR / name
        if not link.exists():
            os.symlink((source / IMAGES_DIR / record["file_name"]).resolve(), link)
        out_images.append({**record, "id": index + 1, "file_name": name})
        for annotation in by_image.get(int(record["id"]), []):
            out_annotations.append({**annotation, "id": len(out_annotations) + 1, "image_id": index + 1})
    result = {**data, "images": out_images, "annotations": out_annotations}
    (target / ANNOTATIONS_FILE).write_text(json.dumps(result))
    return target
