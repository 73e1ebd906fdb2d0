"""``python -m rtq.deploy triton --model FILE --name NAME --out REPO [options]`` and ``check REPO``.

`triton` writes `REPO/NAME/` for Triton Inference Server from an ONNX file (backends onnxruntime,
openvino, or python: a Python-backend model running the ONNX in ONNX Runtime or OpenVINO) or a
TensorRT engine (backend tensorrt; its I/O from TensorRT, else from the ONNX it was built from).
`check` applies the server's rules offline to every model folder of a repository, and with
`--server` asks the real server (`./workflow.sh triton-setup`) whether it loads each of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rtq.deploy.triton_config import (
    BACKENDS,
    DEFAULT_MAX_BATCH,
    KINDS,
    OPENVINO_PRECISIONS,
    RUNTIMES,
    DeployOptions,
)
from rtq.errors import UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rtq.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("triton", help="write a Triton model folder from an ONNX file or engine")
    t.add_argument("--model", required=True, help="ONNX file (FP32 or Q/DQ INT8, End2End) or engine (.plan)")
    t.add_argument("--name", required=True, help="model name: the folder under --out")
    t.add_argument("--out", required=True, help="model repository folder (created if missing)")
    t.add_argument("--backend", default="onnxruntime", help=f"one of {', '.join(BACKENDS)}")
    t.add_argument("--runtime", default="onnxruntime",
                   help=f"what the python backend runs the ONNX with: {', '.join(RUNTIMES)}")
    t.add_argument("--inference-precision", default="f32",
                   help=f"OpenVINO's float precision in the python backend: {', '.join(OPENVINO_PRECISIONS)} "
                        "(f32 keeps the ONNX's)")
    t.add_argument("--onnx", help="the ONNX an engine was built from (default: its model.build.json)")
    t.add_argument("--max-batch-size", type=int, default=None,
                   help=f"largest batch (symbolic batch only; default: the engine profile's max, else "
                        f"{DEFAULT_MAX_BATCH}; 0 disables batching)")
    t.add_argument("--preferred-batch", type=int, nargs="+", default=[],
                   help="dynamic batcher's preferred sizes")
    t.add_argument("--max-queue-delay-us", type=int, default=0, help="dynamic batcher's max queue delay")
    t.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")
    t.add_argument("--kind", default=None,
                   help=f"instance kind, {' or '.join(KINDS)} (default: GPU for tensorrt, else CPU)")
    t.add_argument("--verify", action="store_true", help="also ask the real server (needs triton-setup)")
    c = sub.add_parser("check", help="check every model folder of a repository")
    c.add_argument("repo", help="model repository folder")
    c.add_argument("--server", action="store_true", help="also ask the real server (needs triton-setup)")
    return p


def _server_says(repo: Path, names: list[str]) -> int:
    from rtq.deploy.triton_server import server_verdict

    failed = 0
    for name in names:
        verdict = server_verdict(repo, [name])
        print(f"{name}: tritonserver: {verdict.message}")
        failed += not verdict.loaded
    return failed


def _check(repo: Path, server: bool) -> int:
    from rtq.deploy.triton_check import model_dir_problems

    if not repo.is_dir():
        raise UserError(f"repository {str(repo)!r} is not a folder: pass the model repository folder")
    folders = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"repository {str(repo)!r} has no model folders: "
                        "write one with `python -m rtq.deploy triton`")
    failed = 0
    for folder in folders:
        problems = model_dir_problems(folder)
        print(f"{folder.name}: " + ("ok" if not problems else "; ".join(problems)))
        failed += bool(problems)
    if server:
        failed += _server_says(repo, [f.name for f in folders])
    return 1 if failed else 0


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "check":
        return _check(Path(args.repo), args.server)
    from rtq.deploy.triton_repo import write_triton_model

    options = DeployOptions(
        backend=args.backend, runtime=args.runtime, inference_precision=args.inference_precision,
        max_batch_size=args.max_batch_size,
        preferred_batch=tuple(args.preferred_batch), max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances, kind=args.kind,
    )
    written = write_triton_model(args.model, args.out, args.name, options, onnx_path=args.onnx)
    print(f"wrote {written.model_dir} (backend {written.config.backend}, max_batch_size "
          f"{written.config.max_batch_size})")
    return _server_says(Path(args.out), [args.name]) if args.verify else 0


if __name__ == "__main__":
    sys.exit(main())
