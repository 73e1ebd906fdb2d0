"""RF-DETR adapter: an ONNX with the `rfdetr` package's I/O, exported here at static batch 1 from a tiny
transformers RF-DETR, rewritten to batch N, run batched, pre/post-processing against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rtq.errors import UserError
from rtq.models.adapters import build_adapter, check_graph, node_groups
from rtq.models.adapters.rfdetr import RfdetrIO
from rtq.models.io import ImageMeta
from rtq.models.onnx_source import check_dynamic_batch, dynamic_batch_onnx

SIDE = 64  # 8x8 patches of 8 pixels, 2x2 windows; 64 tokens >= 20 queries


def tiny_rfdetr() -> object:
    """Smallest transformers RF-DETR that keeps every part (windowed ViT, projector, two-stage decoder)."""
    transformers = pytest.importorskip("transformers")
    import torch

    backbone = {
        "model_type": "rf_detr_dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
        "image_size": SIDE,
        "patch_size": 8,
        "num_windows": 2,
    }
    config = transformers.RfDetrConfig(
        backbone_config=backbone,
        d_model=32,
        decoder_ffn_dim=64,
        decoder_layers=1,
        decoder_self_attention_heads=2,
        decoder_cross_attention_heads=2,
        decoder_n_points=2,
        num_queries=20,
        group_detr=1,
        c2f_num_blocks=1,
        intermediate_size=64,
        num_labels=91,
    )
    torch.manual_seed(0)
    return transformers.RfDetrForObjectDetection(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(static batch-1 export with rfdetr's I/O, its batch-N rewrite)."""
    from rtq.models.adapters.rfdetr_export import export_rfdetr_contract

    folder = tmp_path_factory.mktemp("rfdetr")
    static = export_rfdetr_contract(tiny_rfdetr(), SIDE, folder / "static.onnx")
    dynamic, _ = dynamic_batch_onnx(static, folder / "dynamic.onnx")
    return static, dynamic


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim]


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (40 + 13 * i, 90 - 7 * i, 3), dtype=np.uint8) for i in range(count)]


def test_static_export_becomes_batch_n_and_each_image_gets_its_batch_1_result(
    exported: tuple[Path, Path],
) -> None:
    import onnxruntime as ort

    static, dynamic = exported
    source, rewritten = onnx.load(str(static)), onnx.load(str(dynamic))
    assert [i.name for i in source.graph.input] == ["input"] and _dims(source.graph.input[0]) == [
        1,
        3,
        SIDE,
        SIDE,
    ]
    assert {o.name: _dims(o) for o in source.graph.output} == {"dets": [1, 20, 4], "labels": [1, 20, 91]}
    assert {o.name: _dims(o)[0] for o in [*rewritten.graph.input, *rewritten.graph.output]} == {
        "input": "N",
        "dets": "N",
        "labels": "N",
    }
    io = RfdetrIO(input_size=SIDE)
    feed, _ = io.preprocess(_images(4))
    worst = check_dynamic_batch(dynamic, lambda n: {"input": feed["input"][:n]}, batch=4, atol=1e-5)
    assert worst <= 1e-5
    # the rewrite computes what the static graph computes
    for i in range(4):
        ref = ort.InferenceSession(str(static)).run(None, {"input": feed["input"][i : i + 1]})
        new = ort.InferenceSession(str(dynamic)).run(None, {"input": feed["input"][i : i + 1]})
        for a, b in zip(ref, new, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_openvino_runs_the_rewritten_graph_batched_as_image_by_image(exported: tuple[Path, Path]) -> None:
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(exported[1]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed, _ = RfdetrIO(input_size=SIDE).preprocess(_images(4))
    whole = compiled({"input": feed["input"]})
    for i in range(4):
        alone = compiled({"input": feed["input"][i : i + 1]})
        for out in compiled.outputs:
            np.testing.assert_allclose(whole[out][i : i + 1], alone[out], atol=1e-4)


def test_adapter_detections_do_not_depend_on_the_batch(exported: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported[1]))
    io = build_adapter("rfdetr", input_size=SIDE, num_select=50)
    images = _images(3)
    feed, metas = io.preprocess(images)
    names = [o.name for o in session.get_outputs()]
    batched = io.postprocess(dict(zip(names, session.run(None, feed), strict=True)), metas)
    for image, dets in zip(images, batched, strict=True):
        one_feed, one_meta = io.preprocess([image])
        alone = io.postprocess(dict(zip(names, session.run(None, one_feed), strict=True)), one_meta)[0]
        np.testing.assert_array_equal(dets.labels, alone.labels)
        np.testing.assert_allclose(dets.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(dets.scores, alone.scores, atol=1e-5)
        assert len(dets.scores) <= 50 and np.all(dets.boxes[:, 2] <= image.shape[1])


def test_preprocess_is_torch_bilinear_without_antialias_and_imagenet_normalisation() -> None:
    torch = pytest.importorskip("torch")
    images = _images(2)
    feed, metas = RfdetrIO(input_size=48).preprocess(images)
    assert feed["input"].shape == (2, 3, 48, 48) and feed["input"].dtype == np.float32
    for image, tensor, meta in zip(images, feed["input"], metas, strict=True):
        assert (meta.width, meta.height) == (image.shape[1], image.shape[0])
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(
            x, size=(48, 48), mode="bilinear", align_corners=False, antialias=False
        )
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        np.testing.assert_allclose(tensor, ((x[0] - mean) / std).numpy(), atol=1e-5)


def test_postprocess_is_sigmoid_topk_over_queries_and_classes_with_coco_ids() -> None:
    torch = pytest.importorskip("torch")
    from rtq.models.postprocess import COCO_CATEGORY_IDS

    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (2, 30, 91)).astype(np.float32)
    logits[0, 5, 0] = logits[0, 6, 12] = 20.0  # best pairs, on slot 0 and unused id 12: not COCO classes
    boxes = rng.uniform(0, 1, (2, 30, 4)).astype(np.float32)
    boxes[0, 7] = [0.05, 0.5, 0.3, 0.2]  # sticks out on the left: clamped to x = 0
    logits[0, 7, 1] = 10.0  # slot 1 = COCO id 1 (person) = label 0: the best pair that is kept
    metas = [ImageMeta(width=200, height=100), ImageMeta(width=50, height=80)]
    io = RfdetrIO(num_select=40, score_threshold=0.3)
    got = io.postprocess({"dets": boxes, "labels": logits}, metas)
    for i, meta in enumerate(metas):  # independent: torch sort, COCO id -> label by the sorted id list
        prob = torch.sigmoid(torch.from_numpy(logits[i])).reshape(-1)
        order = torch.sort(prob, descending=True, stable=True).indices[:40]
        query, slot = order // 91, order % 91
        cx, cy, w, h = torch.from_numpy(boxes[i])[query].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        size = torch.tensor([meta.width, meta.height] * 2, dtype=torch.float32)
        xyxy = torch.minimum((xyxy * size).clamp(min=0), size)
        keep = [k for k in range(40) if prob[order[k]] > 0.3 and int(slot[k]) in COCO_CATEGORY_IDS]
        assert got[i].labels.tolist() == [COCO_CATEGORY_IDS.index(int(slot[k])) for k in keep]
        np.testing.assert_allclose(got[i].scores, prob[order[keep]].numpy(), atol=1e-6)
        np.testing.assert_allclose(got[i].boxes, xyxy[keep].numpy(), atol=1e-4)
    assert got[0].labels[0] == 0 and got[0].boxes[0, 0] == 0.0  # person, clamped at the left edge
    assert got[0].scores[0] < 1.0  # the two sigmoid(20) pairs on slots 0 and 12 are gone


def _toy_graph(path: Path, inputs: dict[str, list[int]], outputs: dict[str, list[int]]) -> Path:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in outputs.items()]
    nodes = [helper.make_node("Identity", [ins[0].name], [o.name]) for o in outs]
    onnx.save(helper.make_model(helper.make_graph(nodes, "toy", ins, outs)), str(path))
    return path


def test_a_file_without_rfdetrs_io_is_one_line_error(tmp_path: Path) -> None:
    io = RfdetrIO(input_size=64)
    yolox = _toy_graph(tmp_path / "yolox.onnx", {"images": [1, 3, 64, 64]}, {"output": [1, 3, 64, 64]})
    with pytest.raises(UserError) as err:
        check_graph(io, yolox)
    assert (
        "\n" not in str(err.value)
        and "not an RF-DETR export" in str(err.value)
        and "yolox.onnx" in str(err.value)
    )
    other_size = _toy_graph(
        tmp_path / "s.onnx", {"input": [1, 3, 32, 32]}, {"dets": [1, 3, 4], "labels": [1, 3, 91]}
    )
    with pytest.raises(UserError, match="set model.adapter_options.input_size=32") as err:
        check_graph(io, other_size)
    assert "\n" not in str(err.value)
    check_graph(
        io,
        _toy_graph(tmp_path / "ok.onnx", {"input": [1, 3, 64, 64]}, {"dets": [1, 3, 4], "labels": [1, 3, 9]}),
    )
    with pytest.raises(UserError, match="lack 'dets' and 'labels'") as err:
        io.postprocess({"output": np.zeros((1, 3, 85), np.float32)}, [ImageMeta(10, 10)])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="bad model.adapter_options"):
        build_adapter("rfdetr", resolution=560)


def test_node_groups_split_backbone_projector_and_decoder(exported: tuple[Path, Path]) -> None:
    groups = node_groups("rfdetr", onnx.load(str(exported[0])))
    assert list(groups) == ["backbone", "projector", "decoder"] and all(groups.values())
    assert all("/projector/" in name for name in groups["projector"])
    assert not set(groups["backbone"]) & set(groups["decoder"])


def test_export_command_names_a_bad_preset_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    from rtq.models.adapters.rfdetr_export import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "m.onnx"), "--preset", "huge"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.preset='huge'" in err and not (tmp_path / "m.onnx").exists()


def test_loading_a_detector_checks_the_adapters_contract(tmp_path: Path) -> None:
    """`model.family=onnx model.adapter=rfdetr` on a file of another format fails when loaded, not mid-run."""
    from rtq.models.family import load_detector

    other = _toy_graph(tmp_path / "other.onnx", {"images": [1, 3, 64, 64]}, {"output": [1, 3, 64, 64]})
    cfg = {"family": "onnx", "name": "x", "onnx_path": str(other), "adapter": "rfdetr",
           "adapter_options": {"input_size": 64}}  # fmt: skip
    with pytest.raises(UserError, match="not an RF-DETR export"):
        load_detector(cfg)
