"""Pass registry, PassReport and the run_passes driver on small hand-built graphs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from rtq.errors import UserError
from rtq.surgery.base import (
    PassReport,
    Unmatched,
    check_model,
    get_pass,
    known_passes,
    register_pass,
    run_passes,
)


def _relu_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Neg", ["r"], ["y"], name="neg")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@register_pass("test_base_noop")
def _noop(graph: gs.Graph, options: Mapping[str, Any]) -> PassReport:
    return PassReport("test_base_noop", unmatched=[Unmatched("graph", "nothing here to rewrite")])


@register_pass("test_base_drop_neg")
def _drop_neg(graph: gs.Graph, options: Mapping[str, Any]) -> PassReport:
    report = PassReport("test_base_drop_neg")
    for node in graph.nodes:
        if node.op == "Neg":
            node.op = "Abs"
            report.changed.append(f"{node.name}: Neg -> Abs")
    return report


def test_builtin_passes_are_registered() -> None:
    names = known_passes()
    assert "fuse_attn_offset_prediction" in names and "mark_extra_outputs" in names


def test_unknown_pass_lists_known_ones() -> None:
    with pytest.raises(UserError, match="unknown graph pass 'no_such_pass'.*fuse_attn_offset_prediction"):
        get_pass("no_such_pass")


def test_run_passes_applies_and_saves(tmp_path: Path) -> None:
    src = _relu_model(tmp_path / "in.onnx")
    reports = run_passes(src, tmp_path / "out" / "model.onnx", [{"name": "test_base_drop_neg"}])
    assert reports[0].changed == ["neg: Neg -> Abs"]
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [n.op_type for n in model.graph.node] == ["Relu", "Abs"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_non_optional_pass_that_does_nothing_fails(tmp_path: Path) -> None:
    src = _relu_model(tmp_path / "in.onnx")
    with pytest.raises(UserError, match=r"'test_base_noop' found nothing to do in .*in.onnx.*nothing here"):
        run_passes(src, tmp_path / "out.onnx", [{"name": "test_base_noop"}])
    assert not (tmp_path / "out.onnx").exists()
    reports = run_passes(src, tmp_path / "out.onnx", [{"name": "test_base_noop", "optional": True}])
    assert not reports[0].did_something and (tmp_path / "out.onnx").exists()


def test_missing_input_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        run_passes(tmp_path / "nope.onnx", tmp_path / "out.onnx", ["test_base_noop"])


def test_report_serialises() -> None:
    report = PassReport("p", matched=["a"], changed=["a: x"], unmatched=[Unmatched("b", "bad | pipe")],
                        notes=["n"])
    d = report.to_dict()
    assert d["unmatched"] == [{"where": "b", "reason": "bad | pipe"}]
    md = report.to_markdown()
    assert "| b | bad \\| pipe |" in md and "### Pass `p`" in md


def test_checker_accepts_plugin_nodes_but_not_broken_graphs() -> None:
    node = helper.make_node("my_plugin_op", ["x"], ["y"], plugin_version="1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check_model(model) == ["my_plugin_op"]
    assert model.graph.node[0].domain == ""  # the saved model keeps the TensorRT domain
    bad = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g", [],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(onnx.checker.ValidationError):
        check_model(helper.make_model(bad, opset_imports=[helper.make_opsetid("", 17)]))


def test_write_reports(tmp_path: Path) -> None:
    import json

    from rtq.surgery.base import write_reports

    paths = write_reports([PassReport("a", changed=["x"]), PassReport("b")], tmp_path)
    assert [p.name for p in paths] == ["surgery.json", "surgery.md"]
    assert [r["name"] for r in json.loads(paths[0].read_text())] == ["a", "b"]
    assert "### Pass `b`" in paths[1].read_text()
