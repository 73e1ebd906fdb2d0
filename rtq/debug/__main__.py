"""Command line: `python -m rtq.debug localize | sensitivity | fidelity ...`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rtq.errors import StageSkipped, UserError, exit_on_user_error

REPO = Path(__file__).resolve().parents[2]


def _data_dir(name: str) -> Path | None:
    """Bundled data folder, or the shared copy beside the project."""
    for root in (REPO / "data", REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (root / name).is_dir():
            return root / name
    return None


def _images(source: str | None, count: int) -> list[np.ndarray]:
    from rtq.data.calib import CalibrationImages

    folder = source or _data_dir("coco_calib")
    if folder is None:
        raise UserError("no calibration images found: pass --images DIR")
    return list(CalibrationImages(folder, max_images=count))


def generic_feeds(model: onnx.ModelProto, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Feed for an RT-DETR-style graph: images resized to the input side in 0..1, sizes as (w, h).

    The localiser compares a graph with itself, so exact preprocessing matters less than realistic
    value ranges; a float [N,3,H,W] input gets the images, an int64 [N,2] input their sizes.
    """
    from PIL import Image

    feeds: dict[str, np.ndarray] = {}
    initializers = {i.name for i in model.graph.initializer}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
        if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4:
            h, w = dims[2] or 640, dims[3] or 640
            arrays = [np.asarray(Image.fromarray(im).resize((w, h)), np.float32) / 255.0 for im in images]
            feeds[info.name] = np.stack(arrays).transpose(0, 3, 1, 2).copy()
        elif len(dims) == 2:
            feeds[info.name] = np.array([[im.shape[1], im.shape[0]] for im in images], dtype=np.int64)
        else:
            raise UserError(f"cannot synthesise a feed for input {info.name!r} with shape {dims}")
    return feeds


def _localize(args: argparse.Namespace) -> int:
    from rtq.debug.localize import localize
    from rtq.debug.oracles import FaultInjectionOracle, Oracle, TensorRTOracle
    from rtq.debug.structure import find_fusion_clusters, select_clusters

    path = Path(args.onnx)
    if not path.is_file():
        raise UserError(f"--onnx {path} does not exist: export the Q/DQ model first")
    model = onnx.load(str(path))
    feeds = generic_feeds(model, _images(args.images, args.num_images))
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


def _sensitivity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rtq.debug import sensitivity as sens
    from rtq.debug.auto_recipe import greedy_float_groups, onnx_recipe_dict, recipe_dict, write_recipe

    command = "python -m rtq.debug " + " ".join(shlex.quote(a) for a in argv)
    out = Path(args.out)
    coco = (
        None if args.no_ap else (Path(args.coco_root) if args.coco_root else _data_dir("coco_val2017_mini"))
    )
    reused = sens.load_result(args.from_json) if args.from_json else None
    if reused is not None:
        # measure the greedy steps with the settings the ranking was measured with
        args.calib_images = int(reused.settings.get("calibration_images", args.calib_images))
        args.method = str(reused.settings.get("method", args.method))
    images = _images(args.calib, args.calib_images)
    make_recipe: Callable[[list[str], str], dict[str, Any]]
    if args.model == "yolox_nano":
        from rtq.data.calib import calibration_batches
        from rtq.models.adapters.yolox import YoloxIO

        onnx_path = Path(args.onnx or REPO / "models" / "yolox_nano.onnx")
        if not onnx_path.is_file():
            raise UserError(f"--onnx {onnx_path} does not exist: point it at yolox_nano.onnx")
        groups = sens.yolox_node_groups(onnx.load(str(onnx_path)))
        feeds = list(calibration_batches(images, YoloxIO(), batch_size=1))
        probe = sens.OnnxProbe(onnx_path, feeds, groups, coco, args.eval_images, args.method, out / "models")
        result = reused if reused is not None else sens.onnx_sensitivity(probe)

        def measure(float_groups: Sequence[str]) -> sens.Metrics:
            return probe.measure(float_groups)

        def make_recipe(float_groups: list[str], description: str) -> dict[str, Any]:
            return onnx_recipe_dict(
                args.auto_recipe,
                probe.float_nodes(float_groups),
                description,
                method=args.method,
                calib_images=args.calib_images,
            )
    elif args.model.startswith("rtdetrv2_"):
        import torch

        from rtq.models.build import build_deploy_model
        from rtq.models.families.rtdetr import rtdetr_module_groups

        def factory() -> torch.nn.Module:
            torch.manual_seed(0)
            return build_deploy_model(args.model, args.checkpoint)

        feeds_list = [generic_feeds_rtdetr(im) for im in images]
        groups_glob = rtdetr_module_groups(factory())
        if args.max_ap_drop is not None:
            raise UserError("RT-DETR sensitivity measures fidelity: use --max-fidelity, not --max-ap-drop")
        torch_probe = sens.TorchProbe(
            factory,
            feeds_list,
            groups_glob,
            recipe=args.recipe,
            metric=sens.sorted_scores_l2,
            metric_name="relative L2 error of the sorted detection scores vs FP32",
        )
        if reused is not None:
            result = reused
        else:
            result = sens.torch_sensitivity(torch_probe)
            result.model = args.model

        def measure(float_groups: Sequence[str]) -> sens.Metrics:
            return torch_probe.measure(float_groups)

        def make_recipe(float_groups: list[str], description: str) -> dict[str, Any]:
            import yaml

            from rtq.quant.recipes import RECIPE_DIR

            base_path = RECIPE_DIR / f"{args.recipe}.yaml"
            base = yaml.safe_load(base_path.read_text()) if base_path.is_file() else None
            return recipe_dict(args.auto_recipe, [groups_glob[g] for g in float_groups], description, base)
    else:
        raise UserError(f"--model {args.model!r} is unknown; use yolox_nano or rtdetrv2_r18vd")
    if reused is None:
        result.command = command
    json_path, md_path = sens.write_reports(result, out, stem=f"sensitivity_{args.model}")
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


def _fidelity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rtq.debug.fidelity_report import recipe_fidelity, write_fidelity_report

    command = "python -m rtq.debug " + " ".join(shlex.quote(a) for a in argv)
    calib = args.calib or _data_dir("coco_calib")
    if calib is None:
        raise UserError("no calibration images found: pass --calib DIR")
    val = _data_dir("coco_val2017_mini")
    images = _images(args.images or (str(val / "val2017") if val else None), args.num_images)
    rows = []
    for recipe in args.recipe or ["int8_default"]:
        print(f"measuring {args.model} with recipe {recipe} ...", flush=True)
        rows.append(recipe_fidelity(args.model, args.checkpoint, recipe, calib, args.calib_images, images))
    text, within = write_fidelity_report(rows, Path(args.out), command, args.tolerance)
    print(text)
    return 0 if within else 1


def generic_feeds_rtdetr(image: np.ndarray, size: int = 640) -> dict[str, np.ndarray]:
    """RT-DETR feed of one image: `size` x `size` in 0..1 plus its (w, h)."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size)), np.float32) / 255.0
    return {
        "images": resized.transpose(2, 0, 1)[None].copy(),
        "orig_target_sizes": np.array([[image.shape[1], image.shape[0]]], dtype=np.int64),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rtq.debug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    loc = sub.add_parser("localize", help="find the extra outputs that stop a harmful fusion")
    loc.add_argument("--onnx", required=True, help="Q/DQ ONNX model")
    loc.add_argument(
        "--oracle",
        choices=["fault", "tensorrt"],
        default="fault",
        help="fault: CPU fault-injection simulator; tensorrt: real engine builds",
    )
    loc.add_argument(
        "--fault-layers", default=None, help="simulator: decoder layers with a faulty fusion, e.g. 1,2"
    )
    loc.add_argument(
        "--fault-match", default="sampling_offsets", help="simulator: regex on the cluster's nodes"
    )
    loc.add_argument("--fault", choices=["wrong_scale", "fp16", "bf16"], default="wrong_scale")
    loc.add_argument("--wrong-scale-factor", type=float, default=0.05)
    loc.add_argument("--include", default=None, help="regex restricting candidate tensors")
    loc.add_argument("--threshold", type=float, default=None, help="error counted as fixed")
    loc.add_argument("--images", default=None, help="image folder for the feeds (default: coco_calib)")
    loc.add_argument("--num-images", type=int, default=1)
    loc.add_argument("--no-equivalents", action="store_true", help="skip verifying equivalent tensors")
    loc.add_argument("--out", required=True)

    sen = sub.add_parser("sensitivity", help="per-group quantization sensitivity and auto recipe")
    sen.add_argument("--model", required=True, help="yolox_nano | rtdetrv2_r18vd | rtdetrv2_r50vd")
    sen.add_argument(
        "--onnx", default=None, help="FP32 ONNX for ONNX models (default models/yolox_nano.onnx)"
    )
    sen.add_argument("--checkpoint", default=None, help="RT-DETR checkpoint (default: random weights)")
    sen.add_argument("--recipe", default="int8_default", help="RT-DETR base recipe")
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
    return _sensitivity(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
