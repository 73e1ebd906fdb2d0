"""Export fidelity report: for each recipe, does the Q/DQ ONNX compute what the torch model computes?

One row per recipe: calibrate the RT-DETR model with it, export the raw outputs (`pred_logits`,
`pred_boxes`, `enc_topk_index`), and compare torch with ONNX Runtime in reference mode twice: in
float64 (the criterion; see `rtq.quant.fidelity`) and in float32 as deployed, with the first
quantizer where float32 noise flipped an INT8 level. The rows are what tells an export bug (float64
difference far above 1e-12) from INT8 chaos (float32 only).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rtq.files import write_atomic


def recipe_fidelity(
    model_name: str,
    checkpoint: str | Path | None,
    recipe_name: str,
    calib: str | Path,
    calib_images: int,
    eval_images: Sequence[np.ndarray],
) -> dict[str, Any]:
    """Calibrate, export raw (to a temporary file), compare in float64 and float32; one flat row."""
    from rtq.debug.inputs import load_named_detector
    from rtq.errors import UserError
    from rtq.export.onnx_export import export_raw_onnx
    from rtq.quant.calibrate import calibration_feeds
    from rtq.quant.fidelity import raw_output_fidelity
    from rtq.quant.quantize import quantize
    from rtq.quant.quantizer_fidelity import quantizer_fidelity
    from rtq.quant.recipes import load_recipe

    started = time.perf_counter()
    recipe = load_recipe(recipe_name)
    recipe = replace(
        recipe,
        calib=replace(
            recipe.calib, max_images=calib_images, batch_size=min(recipe.calib.batch_size, calib_images)
        ),
    )
    detector = load_named_detector(model_name, checkpoint=None if checkpoint is None else str(checkpoint))
    io = detector.io
    model = quantize(detector.torch_model, recipe, calibration_feeds(recipe, io, calib), progress=False)
    raw = detector.family.raw_outputs(model)
    if raw is None:
        raise UserError(f"{model_name}: no raw-output form in its family (no raw fidelity); use an RT-DETR")
    feeds = [io.preprocess([image])[0] for image in eval_images]
    with tempfile.TemporaryDirectory(prefix="rtq_fidelity_") as work:
        raw_path = export_raw_onnx(raw, Path(work) / "raw.onnx")
        exact = raw_output_fidelity(model, raw_path, feeds, float64=True)
        deployed = raw_output_fidelity(model, raw_path, feeds)
        pairs = quantizer_fidelity(raw.eval(), raw_path, {"images": feeds[0]["images"]})
    return {
        "model": model_name,
        "recipe": recipe_name,
        "images": int(exact["images"]),
        "float64_logits_max_abs": exact["pred_logits_max_abs"],
        "float64_boxes_max_abs": exact["pred_boxes_max_abs"],
        "float64_queries_selected_differently": int(exact["queries_selected_differently"]),
        "float32_logits_max_abs": deployed["pred_logits_max_abs"],
        "float32_boxes_max_abs": deployed["pred_boxes_max_abs"],
        "float32_queries_selected_differently": int(deployed["queries_selected_differently"]),
        "queries": int(exact["queries"]),
        "qdq_pairs": pairs["pairs_compared"],
        "same_input_flips_modelopt_rounding": pairs["same_input_bin_flips"],
        "float32_first_flip": pairs["first_divergent"],
        "float32_flipped_levels": pairs["end_to_end_bin_flips"],
        "quantizer_outputs": pairs["elements"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _within(row: dict[str, Any], tolerance: float) -> bool:
    return max(row["float64_logits_max_abs"], row["float64_boxes_max_abs"]) <= tolerance


def fidelity_markdown(rows: Sequence[dict[str, Any]], command: str, tolerance: float) -> str:
    """The report: one line per recipe, the float64 verdict first."""
    lines = [
        "# Export fidelity: torch fake-quant vs its Q/DQ ONNX (ONNX Runtime, reference mode)",
        "",
        f"Command: `{command}`",
        "",
        "Raw outputs (`pred_logits`, `pred_boxes`; queries matched by `enc_topk_index`), max abs difference. "
        f"float64 is the criterion (tolerance {tolerance:g}); float32 is the graph as deployed, where float "
        "noise flips INT8 levels and the flips cascade (first flip and count on the first image).",
        "",
        "| model | recipe | images | float64 logits | float64 boxes | within | float32 logits "
        "| float32 boxes | float32 queries differing | Q/DQ pairs | float32 first flip "
        "| flipped / quantizer outputs |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        within = _within(r, tolerance)
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['images']} | {r['float64_logits_max_abs']:.1e} "
            f"| {r['float64_boxes_max_abs']:.1e} | {'yes' if within else '**no**'} "
            f"| {r['float32_logits_max_abs']:.2g} | {r['float32_boxes_max_abs']:.2g} "
            f"| {r['float32_queries_selected_differently']}/{r['queries']} | {r['qdq_pairs']} "
            f"| `{r['float32_first_flip']}` | {r['float32_flipped_levels']:,} / {r['quantizer_outputs']:,} |"
        )
    return "\n".join(lines) + "\n"


def write_fidelity_report(
    rows: Sequence[dict[str, Any]], out: Path, command: str, tolerance: float
) -> tuple[str, bool]:
    """Write `fidelity.json` and `fidelity.md` under `out`; returns (markdown, every row within)."""
    text = fidelity_markdown(rows, command, tolerance)
    write_atomic(out / "fidelity.json", json.dumps(list(rows), indent=2))
    write_atomic(out / "fidelity.md", text)
    return text, all(_within(row, tolerance) for row in rows)
