"""Command line: `python -m rtq.debug localize | sensitivity | sensitivity-diff | fidelity | reduce |
mixed-precision ...`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from rtq.config import conf_section
from rtq.errors import StageSkipped, UserError, exit_on_user_error
from rtq.paths import data_dir

if TYPE_CHECKING:
    pass


def _localize(args: argparse.Namespace) -> int:
    from rtq.debug.inputs import model_family, sample_images
    from rtq.debug.localize import localize
    from rtq.debug.oracles import FaultInjectionOracle, Oracle, TensorRTOracle
    from rtq.debug.structure import find_fusion_clusters, select_clusters

    path = Path(args.onnx)
    if not path.is_file():
        raise UserError(f"--onnx {path} does not exist: export the Q/DQ model first")
    model = onnx.load(str(path))
    feeds = model_family(args.model).graph_feeds(model, sample_images(args.images, args.num_images))
    oracle: Oracle
    if args.oracle == "fault":
        layers = [int(x) for x in args.fault_layers.split(",")] if args.fault_layers else None
        clusters = select_clusters(find_fusion_clusters(model), args.fault_match, layers)
        if not clusters:
            raise UserError(
                f"no fusion cluster matches --fault-match {args.fault_match!r} "
                f"--fault-layers {args.fault_layers}; "
                "check the layer indices"
            )
        print(f"simulated faulty fusions: {', '.join(c.name for c in clusters)}")
        oracle = FaultInjectionOracle(model, feeds, clusters, args.fault, args.wrong_scale_factor)
    candidates = None
    if args.oracle == "openvino":
        from rtq.debug.openvino_oracle import OpenVinoOracle

        ov_oracle = OpenVinoOracle(path, feeds)
        candidates = ov_oracle.candidates(args.include)
        oracle = ov_oracle
    elif args.oracle == "tensorrt":
        try:
            oracle = TensorRTOracle(path, feeds, work_dir=Path(args.out) / "engines")
        except StageSkipped as err:
            print(f"skipped: {err}")
            return 0
    result = localize(
        model,
        oracle,
        candidates=candidates,
        include=args.include,
        threshold=args.threshold,
        verify_equivalents=not args.no_equivalents,
        out_dir=args.out,
        name=path.stem,
    )
    print((Path(args.out) / "report.md").read_text())
    return 0 if result.status != "not_fixed_by_marking" else 1


def _command(argv: Sequence[str]) -> str:
    return "python -m rtq.debug " + " ".join(shlex.quote(a) for a in argv)


def _sensitivity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Rank the detector's quantization groups (its family names them), optionally emit a recipe."""
    from rtq.debug.inputs import load_named_detector, sample_images
    from rtq.debug.sensitivity_report import load_result
    from rtq.debug.sensitivity_run import SensitivitySettings, analyse

    reused = load_result(args.from_json) if args.from_json else None
    if reused is not None:
        # measure the greedy steps with the settings the ranking was measured with
        args.calib_images = int(reused.settings.get("calibration_images", args.calib_images))
        args.method = str(reused.settings.get("method", args.method))
    coco = None if args.no_ap else (args.coco_root or data_dir("coco_val2017_mini"))
    settings = SensitivitySettings(
        calib_images=args.calib_images,
        method=args.method,
        recipe=args.recipe,
        coco_root=None if coco is None else str(coco),
        eval_images=args.eval_images,
        auto_recipe=args.auto_recipe,
        max_ap_drop=args.max_ap_drop,
        max_fidelity=args.max_fidelity,
    )
    images = sample_images(args.calib, settings.calib_images)
    detector = load_named_detector(args.model, checkpoint=args.checkpoint, onnx_path=args.onnx)
    _, written = analyse(detector, settings, images, Path(args.out), _command(argv), reused)
    print(written[1].read_text())
    return 0


def _sensitivity_diff(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rtq.debug.sensitivity_diff import write_diff

    if len(args.before or []) != len(args.after or []):
        raise UserError("give --before and --after the same number of times (one pair per run compared)")
    pairs = list(zip(args.before or [], args.after or [], strict=True))
    print(write_diff(pairs, args.out, _command(argv), args.title, args.note))
    return 0


def _fidelity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rtq.debug.fidelity_report import recipe_fidelity, write_fidelity_report
    from rtq.debug.inputs import sample_images

    command = _command(argv)
    calib = args.calib or data_dir("coco_calib")
    if calib is None:
        raise UserError("no calibration images found: pass --calib DIR")
    val = data_dir("coco_val2017_mini")
    images = sample_images(args.images or (str(val / "val2017") if val else None), args.num_images)
    rows = []
    for recipe in args.recipe or ["int8_default"]:
        print(f"measuring {args.model} with recipe {recipe} ...", flush=True)
        rows.append(recipe_fidelity(args.model, args.checkpoint, recipe, calib, args.calib_images, images))
    text, within = write_fidelity_report(rows, Path(args.out), command, args.tolerance)
    print(text)
    return 0 if within else 1


def _reduce(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Cut the model to a minimal subgraph OpenVINO still gets wrong, saved as a repro."""
    import logging

    from rtq.backends.openvino.compile import OpenVinoSettings
    from rtq.debug.reduce import random_feeds, reduce_mismatch

    path = Path(args.model_onnx)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; fix the path")
    if args.image is not None:
        from rtq.data.coco import load_rgb
        from rtq.debug.inputs import load_named_detector

        if not Path(args.image).is_file():
            raise UserError(f"--image {args.image} does not exist; pass an image file")
        feeds, _ = load_named_detector(args.model).io.preprocess([load_rgb(Path(args.image))])
    else:
        feeds = random_feeds(path, args.random_seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = OpenVinoSettings(inference_precision=args.inference_precision)
    reduce_mismatch(
        path,
        feeds,
        args.out,
        settings,
        args.threshold,
        max_compiles=args.max_compiles,
        command=_command(argv),
    )
    print((Path(args.out) / "report.md").read_text())
    return 0


def _mixed_precision(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Fewest float nodes within an AP budget, measured by OpenVINO compiles; Pareto set; proxy check."""
    import json

    from rtq.backends.openvino.compile import OpenVinoSettings
    from rtq.data.coco import CocoDataset
    from rtq.debug.inputs import load_named_detector, sample_images
    from rtq.debug.mixed_precision import openvino_ap_scorer, proxy_ranking, render_markdown, search
    from rtq.files import write_atomic
    from rtq.quant.qdq_edit import quantized_nodes

    for flag, value in (("--qdq", args.qdq), ("--fp32", args.fp32)):
        if not Path(value).is_file():
            raise UserError(f"{flag} {value} does not exist; give the model's ONNX file")
    coco = args.coco_root or data_dir("coco_val2017_mini")
    if coco is None:
        raise UserError("no COCO images (data/coco_val2017_mini here or in ../shared): pass --coco-root")
    detector = load_named_detector(args.model)
    qdq = onnx.load(str(args.qdq))
    nodes = quantized_nodes(qdq)
    if not nodes:
        raise UserError(f"--qdq {args.qdq} has no quantized Conv/MatMul/Gemm; give a Q/DQ model")
    feeds = [detector.io.preprocess([image])[0] for image in sample_images(args.images, args.proxy_images)]
    from rtq.debug.oracles import run_model

    fp32_outputs = [run_model(onnx.load(str(args.fp32)), feed) for feed in feeds]
    out = Path(args.out)
    from rtq.cache import file_digest

    proxy_file, digest = out / "proxy.json", file_digest(args.qdq)
    cached = json.loads(proxy_file.read_text()) if proxy_file.is_file() else {}
    if (
        cached.get("qdq_digest") == digest
        and cached.get("images") == len(feeds)
        and cached.get("kind") == "only_int8"
    ):
        ranking = [(str(n), float(g)) for n, g in cached["ranking"]]  # same graph, same images: reuse
    else:
        print(f"proxy: ONNX Runtime, {len(nodes)} nodes, each alone quantized, on {len(feeds)} images")
        ranking = proxy_ranking(qdq, nodes, feeds, fp32_outputs)
        write_atomic(
            proxy_file,
            json.dumps({"qdq_digest": digest, "images": len(feeds), "kind": "only_int8", "ranking": ranking}),
        )
    dataset = CocoDataset(str(coco), max_images=args.eval_images)
    settings = OpenVinoSettings(inference_precision=args.inference_precision)
    score = openvino_ap_scorer(detector.io, dataset, settings)
    result = search(Path(args.qdq), Path(args.fp32), score, ranking, args.budget, args.max_compiles)
    text = render_markdown(result, f"Mixed precision on OpenVINO: {args.model}", _command(argv))
    write_atomic(out / "report.md", text)
    write_atomic(out / "report.json", json.dumps(result.to_json(), indent=2))
    if args.recipe:
        from rtq.debug.auto_recipe import onnx_recipe_dict, write_recipe

        recipe = onnx_recipe_dict(
            args.recipe,
            result.chosen,
            f"float set chosen on OpenVINO within {args.budget:g} AP of FP32 ({result.compiles} compiles)",
        )
        write_recipe(recipe, out / f"{args.recipe}.yaml", header=f"Written by: {_command(argv)}")
    print(text)
    return 0 if result.within_budget else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rtq.debug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    loc = sub.add_parser("localize", help="find the extra outputs that stop a harmful fusion")
    defaults = conf_section("localize")  # the `localize:` block of conf/config.yaml, shared with rtq.run
    loc.add_argument("--onnx", required=True, help="Q/DQ ONNX model")
    loc.add_argument(
        "--model", default="rtdetrv2_r18vd", help="conf/model/ config whose family makes the graph's feeds"
    )
    loc.add_argument(
        "--oracle",
        choices=["fault", "tensorrt", "openvino"],
        default=defaults["oracle"],
        help="fault: CPU fault-injection simulator; tensorrt: real engine builds; openvino: real compiles",
    )
    layers = defaults["fault_layers"]
    loc.add_argument(
        "--fault-layers",
        default=",".join(str(x) for x in layers) if layers is not None else None,
        help="simulator: decoder layers with a faulty fusion, e.g. 1,2",
    )
    loc.add_argument(
        "--fault-match", default=defaults["fault_match"], help="simulator: regex on the cluster's nodes"
    )
    loc.add_argument("--fault", choices=["wrong_scale", "fp16", "bf16"], default=defaults["fault"])
    loc.add_argument("--wrong-scale-factor", type=float, default=defaults["wrong_scale_factor"])
    loc.add_argument("--include", default=defaults["include"], help="regex restricting candidate tensors")
    loc.add_argument("--threshold", type=float, default=defaults["threshold"], help="error counted as fixed")
    loc.add_argument("--images", default=None, help="image folder for the feeds (default: coco_calib)")
    loc.add_argument("--num-images", type=int, default=defaults["num_images"])
    loc.add_argument(
        "--no-equivalents",
        action="store_true",
        default=not defaults["verify_equivalents"],
        help="skip verifying equivalent tensors",
    )
    loc.add_argument("--out", required=True)

    sen = sub.add_parser("sensitivity", help="per-group quantization sensitivity and auto recipe")
    sen.add_argument("--model", required=True, help="a conf/model/ config: yolox_nano, rtdetrv2_r18vd, ...")
    sen.add_argument("--onnx", default=None, help="FP32 ONNX of an ONNX model (default: config onnx_path)")
    sen.add_argument("--checkpoint", default=None, help="RT-DETR checkpoint (default: random weights)")
    sens = conf_section("sensitivity")  # the `sensitivity:` block of conf/config.yaml, shared with rtq.run
    sen.add_argument("--recipe", default=sens["recipe"], help="base recipe of a torch model (conf/quant/)")
    sen.add_argument("--calib", default=None, help="calibration image folder (default coco_calib)")
    sen.add_argument("--calib-images", type=int, default=sens["calib_images"])
    sen.add_argument("--method", default=sens["method"])
    sen.add_argument("--coco-root", default=None, help="COCO folder for AP (default coco_val2017_mini)")
    sen.add_argument("--eval-images", type=int, default=sens["eval_images"])
    sen.add_argument("--no-ap", action="store_true", help="fidelity only")
    sen.add_argument("--auto-recipe", default=sens["auto_recipe"], help="name of the recipe to emit")
    sen.add_argument("--max-ap-drop", type=float, default=sens["max_ap_drop"])
    sen.add_argument("--max-fidelity", type=float, default=sens["max_fidelity"])
    sen.add_argument(
        "--from-json", default=None, help="reuse the ranking of an earlier run's sensitivity_<model>.json"
    )
    sen.add_argument("--out", required=True)

    diff = sub.add_parser("sensitivity-diff", help="two sensitivity JSONs of one model side by side")
    diff.add_argument("--before", action="append", help="sensitivity JSON of a first run (repeatable)")
    diff.add_argument("--after", action="append", help="sensitivity JSON of its second run")
    diff.add_argument("--out", required=True, help="Markdown file to write")
    diff.add_argument("--title", default="", help="heading (default: 'Sensitivity before vs after: MODEL')")
    diff.add_argument("--note", default="", help="paragraph under the heading")

    fid = sub.add_parser("fidelity", help="torch fake-quant vs exported Q/DQ ONNX, float64 and float32")
    fid.add_argument("--model", default="rtdetrv2_r18vd", help="an RT-DETR variant of conf/model/")
    fid.add_argument("--checkpoint", default=None, help="RT-DETR checkpoint (default: random weights)")
    fid.add_argument("--recipe", action="append", help="conf/quant/ recipe (repeatable; int8_default)")
    fid.add_argument("--calib", default=None, help="calibration image folder (default coco_calib)")
    fid.add_argument("--calib-images", type=int, default=4)
    fid.add_argument("--images", default=None, help="image folder compared on (default coco_val2017_mini)")
    fid.add_argument("--num-images", type=int, default=2)
    fid.add_argument("--tolerance", type=float, default=1e-4, help="float64 raw-output bound")
    fid.add_argument("--out", required=True)

    red = sub.add_parser("reduce", help="minimal subgraph where OpenVINO disagrees with ONNX Runtime")
    red.add_argument("model_onnx", metavar="MODEL.onnx", help="ONNX model (FP32 or Q/DQ)")
    red.add_argument("--out", required=True, help="folder for reduced.onnx, its inputs and the reports")
    feed = red.add_mutually_exclusive_group()
    feed.add_argument("--image", default=None, help="an image, preprocessed like --model does")
    feed.add_argument("--random-seed", type=int, default=0, help="random 0..255 feeds (the default, seed 0)")
    red.add_argument("--model", default="yolox_nano", help="conf/model/ config that preprocesses --image")
    red.add_argument("--threshold", type=float, default=0.05, help="normalised error counted as a mismatch")
    red.add_argument("--inference-precision", default="f32", help="OpenVINO inference precision hint")
    red.add_argument("--max-compiles", type=int, default=200, help="stop cutting nodes after this many")

    mix = sub.add_parser("mixed-precision", help="float set within an AP budget, measured by OpenVINO")
    mix.add_argument("--qdq", required=True, help="Q/DQ ONNX (every variant keeps some of its nodes float)")
    mix.add_argument("--fp32", required=True, help="the FP32 ONNX it was quantized from")
    mix.add_argument("--model", default="yolox_nano", help="conf/model/ config (pre/post-processing)")
    mix.add_argument("--budget", type=float, default=1.0, help="AP points below FP32 allowed")
    mix.add_argument("--max-compiles", type=int, default=20)
    mix.add_argument("--coco-root", default=None, help="COCO folder scored on (default coco_val2017_mini)")
    mix.add_argument("--eval-images", type=int, default=None)
    mix.add_argument("--images", default=None, help="proxy image folder (default coco_calib)")
    mix.add_argument("--proxy-images", type=int, default=4)
    mix.add_argument("--inference-precision", default="f32", help="OpenVINO inference precision hint")
    mix.add_argument("--recipe", default=None, help="name of an ONNX recipe to write from the chosen set")
    mix.add_argument("--out", required=True)
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "localize":
        return _localize(args)
    if args.command == "fidelity":
        return _fidelity(args, argv)
    if args.command == "reduce":
        return _reduce(args, argv)
    if args.command == "mixed-precision":
        return _mixed_precision(args, argv)
    if args.command == "sensitivity-diff":
        return _sensitivity_diff(args, argv)
    return _sensitivity(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
