"""The real RT-DETRv2 Q/DQ export runs at any batch in ONNX Runtime with the same per-image results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.evaluate.runners import activated
from rtq.paths import PROJECT_ROOT


def test_qdq_export_gives_identical_per_image_results_at_batch_1_and_4(
    rtdetr_qdq: Callable[[str], Path],
) -> None:
    from rtq.data.calib import CalibrationImages
    from rtq.models.family import get_family

    path = rtdetr_qdq("rtdetrv2_r18vd")
    model = onnx.load(str(path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "N", value.name
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 150

    images = list(CalibrationImages(PROJECT_ROOT / "data" / "coco_val2017_mini" / "val2017", max_images=4))
    singles = [get_family("rtdetr").graph_feeds(model, [image]) for image in images]
    batch = {name: np.concatenate([feed[name] for feed in singles]) for name in singles[0]}
    runner = make_onnxrt_runner(path, mode="reference", providers=["CPUExecutionProvider"])
    with activated(runner):
        together = runner.infer(batch)
        alone = [runner.infer(feed) for feed in singles]
    assert together["scores"].shape[0] == 4
    for index, result in enumerate(alone):
        for name in ("labels", "boxes", "scores"):
            np.testing.assert_allclose(
                together[name][index], result[name][0], rtol=0, atol=1e-5, err_msg=name
            )
