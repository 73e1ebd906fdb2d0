"""RF-DETR family: presets, preprocessing and postprocessing against transformers' own, the
detector a config loads, and (slow) the pipeline from export to INT8 compare and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtq.errors import UserError
from rtq.models.family import FAMILIES, family_source, load_detector
from rtq.models.io import ImageMeta
from rtq.models.rfdetr import PRESETS, check_resolution, get_preset, rfdetr_config
from rtq.models.rfdetr_io import IMAGENET_MEAN, IMAGENET_STD, RfDetrIO, to_pixel_values

pytest.importorskip("transformers")

SIDE = 320


def _image(h: int = 97, w: int = 131, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_presets_are_the_published_sizes() -> None:
    nano = rfdetr_config(PRESETS["nano"])
    assert (nano.backbone_config.patch_size, nano.backbone_config.image_size) == (16, 384)
    assert nano.backbone_config.out_features == ["stage3", "stage6", "stage9", "stage12"]
    assert (nano.decoder_layers, nano.num_labels, nano.num_queries) == (2, 91, 300)
    assert [PRESETS[p].resolution for p in ("nano", "small", "medium", "base")] == [384, 512, 576, 560]
    assert rfdetr_config(PRESETS["base"]).backbone_config.image_size == 518


@pytest.mark.parametrize(
    "side,message",
    [(300, r"model.input_size=300 must be a positive multiple of 32"),
     (256, r"256 gives 256 tokens, fewer than 300 queries; use at least 288")],
)
def test_bad_input_size_is_one_line_user_error(side: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_resolution(get_preset("nano"), side)


def test_unknown_preset_and_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model.preset='huge' is not an RF-DETR size; use one of: nano"):
        get_preset("huge")
    with pytest.raises(UserError, match=r"is not a transformers checkpoint folder \(no config.json\)"):
        load_detector({"family": "rfdetr", "preset": "nano", "input_size": SIDE, "checkpoint": str(tmp_path)})


def test_preprocessing_is_the_processors_arithmetic() -> None:
    """Rescale, bilinear resize of the float image (antialias off), ImageNet mean/std: the steps of
    `RfDetrImageProcessor._preprocess`, done here with torch's own resize."""
    image = _image()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() * (1 / 255)
    x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False, antialias=False)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert np.abs(to_pixel_values(image, SIDE) - x[0].numpy()).max() < 5e-5  # measured 1.6e-5


def test_preprocessing_equals_transformers_processor() -> None:
    pytest.importorskip("torchvision", reason="RfDetrImageProcessor needs torchvision")
    from transformers import RfDetrImageProcessor

    processor = RfDetrImageProcessor(size={"height": SIDE, "width": SIDE})
    images = [_image(97, 131, 0), _image(240, 180, 1)]
    expected = processor(images=images, return_tensors="pt")["pixel_values"].numpy()
    feed, _ = RfDetrIO(input_size=SIDE).preprocess(images)
    assert np.abs(feed["images"] - expected).max() < 5e-5


def test_postprocessing_equals_transformers() -> None:
    pytest.importorskip("torchvision", reason="RfDetrImageProcessor needs torchvision")
    from transformers import RfDetrImageProcessor
    from transformers.models.rf_detr.modeling_rf_detr import RfDetrObjectDetectionOutput

    from rtq.models.postprocess import COCO_CATEGORY_IDS

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0.1, 0.5, (1, 300, 4)).astype(np.float32)
    logits = rng.normal(0, 3, (1, 300, 91)).astype(np.float32)
    outputs = RfDetrObjectDetectionOutput(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))
    processor = RfDetrImageProcessor()
    ref = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(240, 320)])[0]
    dets = RfDetrIO(input_size=SIDE).postprocess({"boxes": boxes, "logits": logits}, [ImageMeta(320, 240)])[0]
    coco = np.isin(ref["labels"].numpy(), COCO_CATEGORY_IDS)
    assert np.array_equal(np.asarray(COCO_CATEGORY_IDS)[dets.labels], ref["labels"].numpy()[coco])
    assert np.abs(dets.boxes - ref["boxes"].numpy()[coco]).max() < 1e-3
    assert np.abs(dets.scores - ref["scores"].numpy()[coco]).max() < 1e-6


def test_logit_index_is_the_coco_category_id() -> None:
    """Index 1 (person) -> contiguous label 0, 90 (toothbrush) -> 79; 0 and unused ids are dropped."""
    logits = np.full((1, 3, 91), -20.0, dtype=np.float32)
    logits[0, 0, 1], logits[0, 1, 90], logits[0, 2, 0], logits[0, 2, 12] = 5.0, 4.0, 9.0, 8.0
    boxes = np.asarray([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]], np.float32)
    io = RfDetrIO(input_size=SIDE, top_k=4)
    dets = io.postprocess({"boxes": boxes, "logits": logits}, [ImageMeta(200, 100)])
    assert dets[0].labels.tolist() == [0, 79]
    assert np.allclose(dets[0].boxes[0], [80, 30, 120, 70])
    with pytest.raises(UserError, match=r"lack \['logits'\]"):
        RfDetrIO().postprocess({"boxes": boxes}, [ImageMeta(200, 100)])


def test_family_loads_a_random_weight_detector_that_detects() -> None:
    assert "rfdetr" in FAMILIES
    assert family_source({"family": "rfdetr"}) == "torch"
    detector = load_detector({"family": "rfdetr", "preset": "nano", "input_size": SIDE})
    assert detector.random_weights and detector.name == "rfdetr_nano"
    images = [_image(97, 131, 0), _image(240, 180, 1)]
    feed, metas = detector.io.preprocess(images)
    assert feed["images"].shape == (2, 3, SIDE, SIDE)
    with torch.no_grad():
        boxes, logits = detector.torch_model(torch.from_numpy(feed["images"]))
    assert boxes.shape == (2, 300, 4) and logits.shape == (2, 300, 91)
    dets = detector.io.postprocess({"boxes": boxes.numpy(), "logits": logits.numpy()}, metas)
    for det, meta in zip(dets, metas, strict=True):
        assert 0 < len(det.labels) <= 300 and det.labels.min() >= 0 and det.labels.max() < 80
        assert np.all(np.diff(det.scores) <= 0)
        assert det.boxes[:, 2].max() <= 1.5 * meta.width


@pytest.mark.slow
def test_pipeline_int8_onnx_runtime_end_to_end(tmp_path: Path) -> None:
    """export (fold) -> modelopt ONNX PTQ -> Polygraphy compare -> COCO evaluation + batch sweep."""
    from rtq.config import compose_config
    from rtq.paths import data_dir
    from rtq.pipeline.driver import run_pipeline

    if data_dir("coco_val2017_mini") is None or data_dir("coco_calib") is None:
        pytest.skip("COCO mini / calibration images not found (bundled data/ or ../shared)")
    overrides = [
        "experiment=rfdetr_nano_int8_ort", f"model.input_size={SIDE}", "data.max_images=2",
        "quant.calib.max_images=4", "evaluate.sweep_batches=[1,2]", "compare.num_images=1",
        f"results.store={tmp_path / 'results.jsonl'}", f"cache_dir={tmp_path / 'cache'}",
    ]
    cfg = compose_config(overrides)
    row = run_pipeline(cfg, tmp_path / "run")
    assert row["precision"] == "int8"
    assert [r["batch"] for r in row["sweep"]] == [1, 2]
    assert (tmp_path / "run" / "compare" / "report.md").is_file()
