"""`python -m rtq.models.rfdetr_report`: write experiments/rfdetr_<preset>/report.md by running it all.

FP32 torch vs ONNX parity and batch N == N x batch 1 (in ONNX Runtime, on real COCO images), the
four pipeline rows (FP32 / INT8 in ONNX Runtime and OpenVINO, each a `python -m rtq.run` command),
INT8 vs FP32 through Polygraphy's Comparator, and the batch sweeps. The weights are random: AP
means nothing here, agreement and speed do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtq.errors import UserError, exit_on_user_error
from rtq.paths import PROJECT_ROOT

EXPERIMENTS = ("fp32_ort", "fp32_openvino", "int8_ort", "int8_openvino")


def _coco_images(count: int) -> list[np.ndarray]:
    from rtq.data.coco import CocoDataset
    from rtq.paths import data_dir

    root = data_dir("coco_val2017_mini")
    if root is None:
        raise UserError("COCO mini images not found; bundle data/coco_val2017_mini or provide ../shared")
    dataset = CocoDataset(str(root), max_images=count)
    return [dataset.load_image(image) for image in dataset.images[:count]]


def _ort(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feed)]


def parity_section(preset: str, side: int, images: list[np.ndarray], work: Path) -> list[str]:
    """Torch vs ONNX Runtime (each export fix), and batch N vs N x batch 1, on the same images."""
    import torch

    from rtq.export.export_fixes import decomposition_error
    from rtq.models.rfdetr import RfDetrDeploy, build_rfdetr, export_rfdetr_onnx, parity
    from rtq.models.rfdetr_io import RfDetrIO

    deploy = RfDetrDeploy(build_rfdetr(preset), side, selection=True)
    try:
        export_rfdetr_onnx(deploy, work / "no_fix.onnx", fixes=())
        unfixed = "the export without a fix succeeded"
    except UserError as err:
        unfixed = f"without a fix the export stops with: `{err}`"
    feed, _ = RfDetrIO(input_size=side).preprocess(images)
    with torch.no_grad():
        reference = [t.numpy() for t in deploy(torch.from_numpy(feed["images"]))]
    n = len(images)
    lines = [
        "## FP32: torch vs ONNX (ONNX Runtime, CPU)",
        "",
        f"{n} COCO val2017-mini images at {side} x {side}, one batch of {n}. The export carries the",
        "encoder's"
        " selected proposals as an extra output: an image whose two runs picked different queries (a top-k",
        "near-tie) is counted, not compared.",
        "",
        "| export fix | same query selection | max abs err boxes | max abs err logits "
        "| batch N vs N x batch 1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for fix in ("fold_position_embeddings", "decompose_antialiased_resize"):
        path = export_rfdetr_onnx(deploy, work / f"parity_{fix}.onnx", fixes=[fix])
        batched = _ort(path, feed)
        result = parity(reference, batched)
        singles = [_ort(path, {"images": feed["images"][i : i + 1]}) for i in range(n)]
        batch_err = max(
            float(np.abs(b[i] - s[0]).max())
            for i, outs in enumerate(singles)
            for b, s in zip(batched, outs, strict=True)
        )
        lines.append(
            f"| `{fix}` | {result.matched}/{n} | {result.max_box_error:.3g} | "
            f"{result.max_logit_error:.3g} | {batch_err:.3g} |"
        )
    config: Any = deploy.model.config
    backbone = config.backbone_config
    grid, new = backbone.image_size // backbone.patch_size, side // backbone.patch_size
    lines += [
        "",
        f"The {grid} x {grid} position grid is resized to {new} x {new} while tracing; {unfixed}",
        "",
        "The MatMul form of that resize against torch's antialiased bicubic in float32 "
        f"(`decomposition_error`): {decomposition_error((grid, grid), (new, new)):.3g} max abs on "
        "unit-normal input (float64: the same formula to ~1e-15).",
        "",
    ]
    return lines


def _run_experiment(
    name: str, overrides: Sequence[str], out: Path, work: Path
) -> tuple[str, dict[str, Any], float]:
    command = [
        sys.executable,
        "-m",
        "rtq.run",
        f"experiment={name}",
        *overrides,
        f"hydra.run.dir={work / name}",
        f"results.store={out / 'results.jsonl'}",
    ]
    shown = "python -m rtq.run " + " ".join([f"experiment={name}", *overrides])
    start = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"experiment={name} failed (exit {done.returncode}): {tail[0]}")
    row = json.loads((work / name / "results.json").read_text())
    return shown, row, seconds


def sweep_table(row: dict[str, Any]) -> list[str]:
    lines = [
        "| batch | throughput (img/s) | batch time (ms) | per-frame time (ms) | throughput vs batch 1 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    base = next((r["throughput"] for r in row["sweep"] if r["batch"] == 1), None)
    for r in row["sweep"]:
        ratio = f"{r['throughput'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['batch']} | {r['throughput']:.2f} | {r['batch_time_ms']:.1f} | "
            f"{r['per_frame_ms']:.1f} | {ratio} |"
        )
    return lines


def int8_compare_section(
    out: Path, work_dir: Path, prefix: str, side: int, images: list[np.ndarray]
) -> list[str]:
    """INT8 (ONNX Runtime, OpenVINO) against the FP32 graph in ONNX Runtime, Polygraphy's Comparator."""
    from omegaconf import OmegaConf
    from polygraphy.logger import G_LOGGER

    from rtq.backends.onnxruntime import make_graph_runner
    from rtq.backends.openvino.compile import OpenVinoSettings
    from rtq.backends.openvino.runner import make_openvino_runner
    from rtq.compare.compare import CompareSettings, compare_runners
    from rtq.models.rfdetr_io import RfDetrIO
    from rtq.paths import CONF_DIR

    io = RfDetrIO(input_size=side)
    prepared = [io.preprocess([image]) for image in images]
    feeds = [feed for feed, _ in prepared]

    def decode(index: int, outputs: Any) -> dict[str, np.ndarray]:
        dets = io.postprocess(dict(outputs), prepared[index][1])[0]
        return {"labels": dets.labels[None], "boxes": dets.boxes[None], "scores": dets.scores[None]}

    fp32 = work_dir / f"{prefix}fp32_ort" / "model.onnx"
    lines = [
        "## INT8 vs FP32 (Polygraphy Comparator)",
        "",
        f"Reference: the FP32 graph in ONNX Runtime (reference mode); {len(feeds)} images; detections",
        "matched order-independently (top 100, same label, IoU >= 0.5). Reports:",
        "`compare_int8_*/report.md` (Polygraphy's `results.json` stays in runs/rfdetr_nano_report/).",
        "INT8 noise is far above the gaps between the encoder's top-k",
        "scores, so INT8 picks other queries in another order and per-query errors (boxes, logits)",
        "are those of different queries; the detection match is the measure.",
        "",
        "| INT8 target | max abs err boxes | max abs err logits | detections matched | score err max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    settings = CompareSettings(score_threshold=0.0, top_k=100)
    backend: Any = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "backend" / "openvino.yaml"))
    openvino = OpenVinoSettings.from_mapping({str(k): v for k, v in backend.items()})
    for backend, folder in (("onnxruntime", "int8_ort"), ("openvino", "int8_openvino")):
        int8 = work_dir / f"{prefix}{folder}" / "model.int8.onnx"
        work = work_dir / f"compare_int8_{backend}"  # Polygraphy's results.json (MBs) stays here
        reference = make_graph_runner(fp32, "fp32-ort", work, "reference")
        target = (
            make_graph_runner(int8, "int8-ort", work, "fast")
            if backend == "onnxruntime"
            else make_openvino_runner(int8, openvino, name="int8-openvino")
        )
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            report = compare_runners(reference, target, feeds, work, settings, decode=decode)
        kept = out / f"compare_int8_{backend}"
        kept.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "report.json"):
            shutil.copyfile(work / name, kept / name)
        outs, dets = report["outputs"], report["detections"]
        lines.append(
            f"| {backend} | {outs['boxes']['max_abs']:.3g} | {outs['logits']['max_abs']:.3g} | "
            f"{dets['matched_fraction']:.2f} | {dets['score_abs_error_max']:.3g} |"
        )
    return lines + [""]


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--images", type=int, default=8, help="evaluation, parity and compare images")
    parser.add_argument("--calib-images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10, help="timed repetitions per sweep batch")
    parser.add_argument("--out", default=None, help="default: experiments/rfdetr_<preset>")
    args = parser.parse_args(argv)
    out = Path(args.out or PROJECT_ROOT / "experiments" / f"rfdetr_{args.preset}")
    work = PROJECT_ROOT / "runs" / f"rfdetr_{args.preset}_report"  # ONNX files and runs (not committed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").unlink(missing_ok=True)
    start = time.perf_counter()
    images = _coco_images(args.images)
    lines = [
        f"# RF-DETR {args.preset}: INT8 deployment on CPU (ONNX Runtime, OpenVINO)",
        "",
        f"Written by `python -m rtq.models.rfdetr_report --preset {args.preset} --input-size "
        f"{args.input_size} --images {args.images} --calib-images {args.calib_images} "
        f"--iterations {args.iterations}`.",
        "",
        "**Random weights** (transformers' `RfDetrForObjectDetection`, seeded; class heads redrawn with",
        "a trained-like spread, `rtq.models.rfdetr.spread_class_heads`): AP is meaningless and not",
        "shown; the point is agreement between torch, ONNX and INT8, and speed.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; "
        f"Python {platform.python_version()}.",
        "",
    ]
    lines += parity_section(args.preset, args.input_size, images, work)
    common = [
        *([] if args.preset == "nano" else [f"model=rfdetr_{args.preset}"]),
        f"model.input_size={args.input_size}",
        f"data.max_images={args.images}",
        "evaluate.warmup=2",
        f"evaluate.iterations={args.iterations}",
        f"compare.num_images={min(args.images, 4)}",
    ]
    rows: dict[str, tuple[str, dict[str, Any], float]] = {}
    for name in EXPERIMENTS:
        extra = [f"quant.calib.max_images={args.calib_images}"] if name.startswith("int8") else []
        rows[name] = _run_experiment(f"rfdetr_nano_{name}", common + extra, out, work)
    lines += int8_compare_section(out, work, "rfdetr_nano_", args.input_size, images)
    lines += ["## Batch sweep (model only, preprocessed COCO images)", ""]
    for name in EXPERIMENTS:
        command, row, seconds = rows[name]
        heading = f"### {row['backend']} {row['precision']}"
        lines += [heading, "", f"`{command}` ({seconds:.0f} s, whole chain)", ""]
        lines += sweep_table(row) + [""]
        if "compare" in row:
            summary = row["compare"].get("summary", {})
            lines += [
                f"Stage `compare` (this model against its own graph in ONNX Runtime reference mode): "
                f"max abs err {summary.get('max_abs_error', float('nan')):.3g}, detections matched "
                f"{summary.get('detections_matched_fraction', float('nan')):.2f}.",
                "",
            ]
    lines += [f"Total: {time.perf_counter() - start:.0f} s.", ""]
    from rtq.files import write_atomic

    path = write_atomic(out / "report.md", "\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
