"""The small command lines take their defaults from conf/, the same YAML `python -m rtq.run` composes."""

from __future__ import annotations

from rtq.compare.__main__ import build_parser as compare_parser
from rtq.config import conf_section
from rtq.debug.__main__ import build_parser as debug_parser


def test_localize_and_compare_defaults_come_from_conf() -> None:
    localize = conf_section("localize")
    args = debug_parser().parse_args(["localize", "--onnx", "m.onnx", "--out", "o"])
    assert args.oracle == localize["oracle"] and args.fault == localize["fault"]
    assert args.num_images == localize["num_images"] and args.threshold == localize["threshold"]
    assert args.fault_layers == ",".join(map(str, localize["fault_layers"]))
    assert args.no_equivalents is (not localize["verify_equivalents"])
    compare = conf_section("compare")
    args = compare_parser().parse_args(["--reference", "a.onnx", "--target", "b.onnx", "--out", "o"])
    assert args.num_images == compare["num_images"] and args.top_k == compare["detection_top_k"]
    assert args.score_threshold == compare["detection_score_threshold"]
    assert args.layer_threshold == compare["layerwise_threshold"]
