"""Write an ONNX file with the `rfdetr` package's I/O from the transformers RF-DETR model.

The `rfdetr` package needs a CUDA build of torchvision, so its `export()` cannot run here; this
writes the same contract (`input` [N,3,S,S] -> `dets` [N,Q,4], `labels` [N,Q,91]) from the
transformers implementation, by default at a static batch of 1 as `export()` does without
`dynamic_batch=True`, so experiments can run the `rfdetr` adapter (and its batch rewrite) on it:

    python -m rtq.models.adapters.rfdetr_export --out runs/rfdetr_onnx/rfdetr_nano.onnx --preset nano
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from rtq.errors import exit_on_user_error

log = logging.getLogger("rtq")


def export_rfdetr_contract(
    network: Any, resolution: int, out: str | Path, opset: int = 17, dynamic_batch: bool = False
) -> Path:
    """Export `RfDetrForObjectDetection` as rfdetr's `input -> dets, labels`, static batch 1 by default."""
    import torch

    from rtq.export.export_fixes import applied_fixes
    from rtq.export.onnx_export import export_module
    from rtq.models.rfdetr import CONTRACTS, DEFAULT_FIXES, RfDetrDeploy

    deploy = RfDetrDeploy(network, resolution, contract="rfdetr")
    batch = 2 if dynamic_batch else 1
    images = torch.rand(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with applied_fixes(deploy, (resolution, resolution), list(DEFAULT_FIXES)) as report:
        path = export_module(deploy, (images,), Path(out), CONTRACTS["rfdetr"], opset, dynamic_batch, False)
    for line in report.lines():
        log.info("export fix %s", line)
    return path


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the .onnx file")
    parser.add_argument("--preset", default="nano", help="RF-DETR size: nano, small, medium, base")
    parser.add_argument("--input-size", type=int, default=None, help="square side (default: the preset's)")
    parser.add_argument("--checkpoint", default=None, help="transformers checkpoint folder (default: random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch N instead of 1")
    args = parser.parse_args(argv)
    from rtq.models.rfdetr import build_rfdetr, check_resolution, get_preset

    preset = get_preset(args.preset)
    side = check_resolution(preset, args.input_size or preset.resolution)
    network = build_rfdetr(args.preset, args.checkpoint, seed=args.seed)
    path = export_rfdetr_contract(network, side, args.out, args.opset, args.dynamic_batch)
    print(f"wrote {path} (input [{'N' if args.dynamic_batch else 1},3,{side},{side}] -> dets, labels)")


if __name__ == "__main__":
    main()
