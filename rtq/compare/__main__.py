"""``python -m rtq.compare --reference A.onnx --target B.onnx [--images DIR --num-images N] --out DIR``.

The target may be an ONNX file (run in ONNX Runtime; plugin nodes run through their reference op) or
a TensorRT engine (``.plan`` / ``.engine``, needs TensorRT). Without ``--images`` the feeds are
Polygraphy's seeded random data, which suits test graphs; detectors should be fed real images.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtq.backends.onnxruntime import make_graph_runner
from rtq.backends.tensorrt.build import ENGINE_SUFFIXES
from rtq.compare.compare import CompareSettings, compare_onnx, compare_runners
from rtq.config import conf_section
from rtq.errors import UserError, exit_on_user_error


def image_feeds(
    folder: str | Path, num_images: int, batch_size: int = 1, model: str | None = None
) -> list[dict[str, np.ndarray]]:
    """Feeds from the first images of a folder, preprocessed as `model` (conf/model/<name>.yaml) does;
    RT-DETR's (``images``, ``orig_target_sizes``) when no model is named."""
    from rtq.data.calib import calibration_batches, find_calibration_images
    from rtq.data.coco import load_rgb

    if num_images <= 0:
        raise UserError(f"--num-images {num_images} must be positive")
    if model is None:
        from rtq.models.rtdetr import RTDETRIO

        io: Any = RTDETRIO()
    else:
        from rtq.debug.inputs import load_named_detector

        io = load_named_detector(model).io
    paths = find_calibration_images(folder)[:num_images]
    return list(calibration_batches((load_rgb(p) for p in paths), io, batch_size))


def random_feeds(runner: Any, iterations: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded random feeds shaped from the runner's input metadata (dynamic dims -> 1)."""
    from polygraphy.comparator import DataLoader

    loader = DataLoader(iterations=iterations, seed=seed)
    with runner:
        loader.input_metadata = runner.get_input_metadata()
    return [{k: np.asarray(v) for k, v in feed.items()} for feed in loader]


def engine_runner(path: Path, name: str) -> Any:
    from rtq.backends.tensorrt.compat import tensorrt_available

    if not tensorrt_available():
        raise UserError(
            f"target {path} is a TensorRT engine but TensorRT is not installed here; "
            "compare an ONNX target or run on a machine with TensorRT"
        )
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name=name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rtq.compare", description=__doc__)
    defaults = conf_section("compare")  # the `compare:` block of conf/config.yaml, shared with rtq.run
    p.add_argument("--reference", required=True, help="reference ONNX (run in ORT reference mode)")
    p.add_argument("--target", required=True, help="target ONNX or TensorRT engine")
    p.add_argument("--images", help="folder of images (preprocessed as --model); default: random feeds")
    p.add_argument("--model", help="conf/model name whose preprocessing makes the feeds (default: RT-DETR's)")
    p.add_argument(
        "--num-images",
        type=int,
        default=defaults["num_images"],
        help="images (or random feeds) to compare on",
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--layerwise", action="store_true", help="mark every tensor as an output on both sides")
    p.add_argument("--layer-regex", help="layer-wise: only tensors whose name matches this regex")
    p.add_argument("--layer-threshold", type=float, default=defaults["layerwise_threshold"])
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--score-threshold", type=float, default=defaults["detection_score_threshold"])
    p.add_argument("--top-k", type=int, default=defaults["detection_top_k"])
    p.add_argument("--out", required=True, help="output folder for results.json, report.json, report.md")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CompareSettings(
        atol=args.atol,
        rtol=args.rtol,
        score_threshold=args.score_threshold,
        top_k=args.top_k,
        layer_threshold=args.layer_threshold,
    )
    out = Path(args.out)
    target = Path(args.target)
    if not target.is_file():
        raise UserError(f"--target {target} does not exist")
    if args.images:
        feeds = image_feeds(args.images, args.num_images, args.batch_size, args.model)
    else:
        feeds = random_feeds(make_graph_runner(args.reference, "reference", out), args.num_images)
    if target.suffix in ENGINE_SUFFIXES:
        if args.layerwise:
            raise UserError("--layerwise needs an ONNX target (mark outputs before building the engine)")
        reference = make_graph_runner(args.reference, "reference", out)
        report = compare_runners(reference, engine_runner(target, "target"), feeds, out, settings)
    else:
        report = compare_onnx(
            args.reference,
            target,
            feeds,
            out,
            settings,
            layerwise=args.layerwise,
            layer_regex=args.layer_regex,
        )
    worst = max((s.get("max_abs", float("inf")) for s in report["outputs"].values()), default=0.0)
    print(
        f"compared {len(report['outputs'])} outputs on {report['iterations']} feeds; "
        f"largest max |err| {worst:.3g}; report: {out / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
