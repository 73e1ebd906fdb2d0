"""`python -m rtq.bench`: CPU benchmark, PyTorch FP32 vs ONNX Runtime and OpenVINO FP32 / INT8.

Defaults live in `conf/bench.yaml`, or `conf/bench_<model>.yaml` for a model with its own (e.g.
`--model yolox_nano`), or `--config PATH`; a flag given here overrides its key. The work is
`rtq.evaluate.bench_run.run_bench`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rtq.errors import exit_on_user_error
from rtq.evaluate.bench_settings import BENCH_CONFIG, BenchSettings, bench_config, load_settings


def parse_args(argv: Sequence[str] | None = None) -> BenchSettings:
    """Command-line options over `conf/bench.yaml` -> `BenchSettings`."""
    parser = argparse.ArgumentParser(
        prog="python -m rtq.bench", description=__doc__.splitlines()[0], epilog=f"defaults: {BENCH_CONFIG}"
    )
    parser.add_argument("--config", type=Path, help="bench YAML (default: conf/bench_<model>.yaml if any)")
    parser.add_argument("--model")
    parser.add_argument("--checkpoint", help="RT-DETRv2 .pth; 'none' for random weights")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--iterations", type=int, help="timed repetitions")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--recipe", help="quantization recipe name or YAML path")
    parser.add_argument("--calib-images", type=int)
    parser.add_argument("--calib-source", type=Path)
    parser.add_argument("--images", type=Path, help="COCO-layout folder of timing images")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-ort-variant", action="store_true", help="skip the ORT-oriented INT8 variants")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--out", type=Path, help="report path; figures and analysis sit beside it")
    parser.add_argument("--analysis-only", action="store_true", help="re-render the analysis only")
    args = vars(parser.parse_args(argv))
    skip_variants = args.pop("no_ort_variant")
    args.pop("analysis_only")
    config = args.pop("config") or bench_config(args["model"])
    settings = load_settings(args, config=config)
    return dataclasses.replace(settings, ort_variants={}) if skip_variants else settings


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    from rtq.evaluate.bench_run import rerender_analysis, run_bench

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(args)
    if "--analysis-only" in args:
        print(f"analysis re-rendered into {rerender_analysis(settings)}")
        return
    command = "python -m rtq.bench " + " ".join(shlex.quote(a) for a in args)
    report = run_bench(settings, command.strip())
    print(report)
    print(f"report written to {settings.out}, figures to {settings.figures_path}")


if __name__ == "__main__":
    main()
