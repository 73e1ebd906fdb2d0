"""`./workflow.sh demo`: the main job on the bundled data, then the AP/FPS table.

Runs YOLOX-Nano (real COCO weights) in FP32 and INT8, then the debugging loop on a real INT8
compiler, OpenVINO: YOLOX INT8 collapsing on it and the graph pass that fixes it, and RT-DETRv2
`int8_extra_outputs` compiled by OpenVINO (fusion list in layers.md, direct vs extra-outputs fusion
diff, compare against ONNX Runtime); then the TensorRT-oriented `int8_fused_plugin` pipeline and the
fusion-bug localiser on a simulated faulty fusion. RT-DETRv2 uses the parity
fixture's checkpoint when `../shared` is beside the project (synthetic weights: AP is not the point)
and random weights otherwise; the run says which.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rtq.errors import exit_on_user_error
from rtq.paths import PROJECT_ROOT, SHARED_DIR
from rtq.results.store import load_store
from rtq.results.table import render_markdown

PARITY_CHECKPOINT = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"


def demo_runs(quick: bool) -> list[tuple[str, list[str]]]:
    """(title, overrides) of each run; `quick` trims images and timing for a smoke test."""
    sweep = ["evaluate.sweep_batches=[1,4]", "evaluate.iterations=3"]
    limit = ["data.max_images=8", "evaluate.sweep_batches=[]"] if quick else []
    # synthetic weights: AP means nothing, so 16 images show the pipeline and its speed
    rtdetr = ["quant.calib.max_images=8", "quant.calib.batch_size=4", "compare.num_images=2"]
    rtdetr += [] if quick else ["data.max_images=16"]
    if PARITY_CHECKPOINT.is_file():
        rtdetr.append(f"model.checkpoint={PARITY_CHECKPOINT}")
    return [
        ("YOLOX-Nano FP32 (ONNX Runtime)", ["experiment=yolox_fp32", *sweep, *limit]),
        (
            "YOLOX-Nano INT8 (modelopt ONNX PTQ, max, sensitive Convs float)",
            ["experiment=yolox_int8_max", *sweep, *limit],
        ),
        (
            "YOLOX-Nano INT8 compiled by OpenVINO: the same Q/DQ file collapses (Concat -> int8 Q/DQ defect)",
            ["experiment=yolox_openvino_int8_max", *sweep, *limit],
        ),
        (
            "YOLOX-Nano INT8 on OpenVINO after the unsigned_activations pass (the fix)",
            ["experiment=yolox_openvino_int8_max_unsigned", *sweep, *limit],
        ),
        (
            "RT-DETRv2-R18 INT8 with extra outputs, compiled by OpenVINO (fusion list, diff, compare)",
            ["experiment=openvino_int8_extra_outputs", *rtdetr, *sweep, *limit],
        ),
        (
            "RT-DETRv2-R18 INT8 with the fused plugin node",
            ["experiment=int8_fused_plugin", *rtdetr, *sweep, *limit],
        ),
        (
            "RT-DETRv2-R18 fusion-bug localisation (simulated faulty fusion in decoder layer 1)",
            ["experiment=localize_fusion_bug", *rtdetr],
        ),
    ]


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtq.demo", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 images, no batch sweep (smoke test)")
    parser.add_argument("--store", default=str(PROJECT_ROOT / "runs" / "demo" / "results.jsonl"))
    args = parser.parse_args(argv)
    store = Path(args.store)
    store.parent.mkdir(parents=True, exist_ok=True)
    store.unlink(missing_ok=True)
    weights = (
        f"the parity fixture checkpoint {PARITY_CHECKPOINT} (synthetic weights)"
        if PARITY_CHECKPOINT.is_file()
        else "random weights (../shared/fixtures not found)"
    )
    print(f"[demo] RT-DETRv2 runs with {weights}; YOLOX-Nano has real COCO weights")
    started = time.perf_counter()
    for title, overrides in demo_runs(args.quick):
        print(f"\n[demo] {title}: python -m rtq.run {' '.join(overrides)}", flush=True)
        command = [sys.executable, "-m", "rtq.run", *overrides, f"results.store={store}"]
        code = subprocess.call(command, cwd=PROJECT_ROOT)
        if code != 0:
            print(f"[demo] {title} failed with exit code {code}", file=sys.stderr)
            return code
    print(f"\n[demo] finished in {time.perf_counter() - started:.0f} s\n")
    print(render_markdown(load_store(store)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
