"""YOLOX node groups, found from the graph's structure, reached through the adapter registry."""

from __future__ import annotations

import onnx
import pytest

from rtq.models.adapters import node_groups
from rtq.paths import PROJECT_ROOT

YOLOX = PROJECT_ROOT / "models" / "yolox_nano.onnx"


@pytest.mark.skipif(not YOLOX.is_file(), reason="models/yolox_nano.onnx not present")
def test_yolox_nano_splits_into_backbone_stages_neck_and_one_head_per_stride() -> None:
    model = onnx.load(str(YOLOX))
    groups = node_groups("yolox", model)
    backbone = ["stem", "dark2", "dark3", "dark4", "dark5"]
    assert list(groups) == [*backbone, "neck", "head_s8", "head_s16", "head_s32"]
    every = [name for nodes in groups.values() for name in nodes]
    assert sorted(every) == sorted(n.name for n in model.graph.node)  # a partition: each node once
    sizes = {len(groups[h]) for h in ("head_s8", "head_s16", "head_s32")}
    assert len(sizes) == 1  # the heads per stride are identical


def test_an_adapter_without_groups_is_a_user_error() -> None:
    from rtq.errors import UserError

    with pytest.raises(UserError, match="no node groups"):
        node_groups("ssd", onnx.ModelProto())
