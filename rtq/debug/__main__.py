"""Command line: `python -m rtq.debug localize | sensitivity | sensitivity-diff | fidelity ...`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rtq.config import conf_section
from rtq.errors import StageSkipped, UserError, exit_on_user_error
from rtq.paths import data_dir

if TYPE_CHECKING:
    from rtq.debug.sensitivity import Metrics, SensitivityResult
    from rtq.models.family import Detector


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
    else:
        try:
            oracle = TensorRTOracle(path, feeds, work_dir=Path(args.out) / "engines")
        except StageSkipped as err:
            print(f"skipped: {err}")
            return 0
    result = localize(
        model,
        oracle,
        include=args.include,
        threshold=args.threshold,
        verify_equivalents=not args.no_equivalents,
        out_dir=args.out,
        name=path.stem,
    )
    print((Path(args.out) / "report.md").read_text())
    return 0 if result.status != "not_fixed_by_marking" else 1


Measure = Callable[[Sequence[str]], "Metrics"]
MakeRecipe = Callable[[list[str], str], dict[str, Any]]


def _command(argv: Sequence[str]) -> str:
    return "python -m rtq.debug " + " ".join(shlex.quote(a) for a in argv)


def _onnx_probe(
    args: argparse.Namespace, detector: Detector, groups: dict[str, Any], images: list[np.ndarray]
) -> tuple[Callable[[], SensitivityResult], Measure, MakeRecipe]:
    """ONNX PTQ of the detector's source graph, with AP where a COCO folder is given."""
    from rtq.data.calib import calibration_batches
    from rtq.debug.auto_recipe import onnx_recipe_dict
    from rtq.debug.onnx_probe import OnnxProbe, onnx_sensitivity

    if detector.source_onnx is None:
        raise UserError(f"{detector.name} has no source ONNX; pass --onnx FILE")
    coco = None if args.no_ap else (Path(args.coco_root) if args.coco_root else data_dir("coco_val2017_mini"))
    feeds = list(calibration_batches(images, detector.io, batch_size=1))
    probe = OnnxProbe(
        detector.source_onnx,
        detector.io,
        feeds,
        groups,
        coco,
        args.eval_images,
        args.method,
        Path(args.out) / "models",
    )

    def make_recipe(float_groups: list[str], description: str) -> dict[str, Any]:
        return onnx_recipe_dict(
            args.auto_recipe,
            probe.float_nodes(float_groups),
            description,
            method=args.method,
            calib_images=args.calib_images,
        )

    return lambda: onnx_sensitivity(probe), probe.measure, make_recipe


def _torch_probe(
    args: argparse.Namespace, detector: Detector, groups: dict[str, Any], images: list[np.ndarray]
) -> tuple[Callable[[], SensitivityResult], Measure, MakeRecipe]:
    """`rtq.quant.quantize` of copies of the detector's torch model; fidelity of the sorted scores."""
    from rtq.compare.metrics import metric
    from rtq.debug.auto_recipe import recipe_dict
    from rtq.debug.torch_probe import TorchProbe, torch_sensitivity

    if args.max_ap_drop is not None:
        raise UserError(
            f"{detector.name} sensitivity measures fidelity: use --max-fidelity, not --max-ap-drop"
        )
    probe = TorchProbe(
        detector.torch_model,
        [detector.io.preprocess([image])[0] for image in images],
        groups,
        recipe=args.recipe,
        metric=metric("sorted_scores_l2"),
        metric_name="relative L2 error of the sorted detection scores vs FP32",
    )

    def make_recipe(float_groups: list[str], description: str) -> dict[str, Any]:
        import yaml

        from rtq.quant.recipes import RECIPE_DIR

        base_path = RECIPE_DIR / f"{args.recipe}.yaml"
        base = yaml.safe_load(base_path.read_text()) if base_path.is_file() else None
        return recipe_dict(args.auto_recipe, [groups[g] for g in float_groups], description, base)

    return lambda: torch_sensitivity(probe, detector.name), probe.measure, make_recipe


def _sensitivity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Rank the detector's quantization groups (its family names them), optionally emit a recipe."""
    from rtq.debug.auto_recipe import greedy_float_groups, write_recipe
    from rtq.debug.inputs import load_named_detector, sample_images
    from rtq.debug.sensitivity_report import load_result, write_reports

    command = _command(argv)
    out = Path(args.out)
    reused = load_result(args.from_json) if args.from_json else None
    if reused is not None:
        # measure the greedy steps with the settings the ranking was measured with
        args.calib_images = int(reused.settings.get("calibration_images", args.calib_images))
        args.method = str(reused.settings.get("method", args.method))
    images = sample_images(args.calib, args.calib_images)
    detector = load_named_detector(args.model, checkpoint=args.checkpoint, onnx_path=args.onnx)
    groups = detector.family.quant_groups(detector)
    setup = _onnx_probe if detector.family.source == "onnx" else _torch_probe
    run, measure, make_recipe = setup(args, detector, groups, images)
    if reused is not None:
        result = reused
    else:
        result = run()
        result.command = command
    json_path, md_path = write_reports(result, out, stem=f"sensitivity_{args.model}")
    print(md_path.read_text())
    if args.auto_recipe:
        chosen = greedy_float_groups(result, measure, args.max_ap_drop, args.max_fidelity)
        last = chosen.steps[-1].metrics
        recipe = make_recipe(
            chosen.float_groups,
            f"auto recipe for {args.model}: float groups {chosen.float_groups} "
            f"(target met: {chosen.met}; measured AP {last.ap}, fidelity {last.fidelity:.4f})",
        )
        header = f"Produced by: {command}"
        if reused is not None and reused.command:
            header += f"\nRanking measured by: {reused.command}"
        path = write_recipe(recipe, out / f"{args.auto_recipe}.yaml", header=header)
        print(f"auto recipe: float groups {chosen.float_groups}, target met: {chosen.met} -> {path}")
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
        choices=["fault", "tensorrt"],
        default=defaults["oracle"],
        help="fault: CPU fault-injection simulator; tensorrt: real engine builds",
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
    sen.add_argument("--recipe", default="int8_default", help="base recipe of a torch model (conf/quant/)")
    sen.add_argument("--calib", default=None, help="calibration image folder (default coco_calib)")
    sen.add_argument("--calib-images", type=int, default=16)
    sen.add_argument("--method", default="max")
    sen.add_argument("--coco-root", default=None, help="COCO folder for AP (default coco_val2017_mini)")
    sen.add_argument("--eval-images", type=int, default=None)
    sen.add_argument("--no-ap", action="store_true", help="fidelity only")
    sen.add_argument("--auto-recipe", default=None, help="name of the recipe to emit")
    sen.add_argument("--max-ap-drop", type=float, default=None)
    sen.add_argument("--max-fidelity", type=float, default=None)
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
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "localize":
        return _localize(args)
    if args.command == "fidelity":
        return _fidelity(args, argv)
    if args.command == "sensitivity-diff":
        return _sensitivity_diff(args, argv)
    return _sensitivity(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
