"""Stage `surgery`: the configured graph passes (`rtq.surgery`), each with its report."""

from __future__ import annotations

import json

from rtq.errors import StageSkipped
from rtq.files import write_atomic
from rtq.pipeline.stage import StageContext, StageResult, register_stage


@register_stage(
    "surgery",
    order=50,
    section="surgery",
    needs=("qdq_onnx|onnx",),
    makes=("surgered_onnx",),
    records=("surgery",),
)
def stage_surgery(ctx: StageContext) -> StageResult:
    """Apply `surgery.passes` to the exported graph; write the surgered ONNX and `surgery.{md,json}`."""
    from rtq.surgery.base import reports_markdown, run_passes

    passes = list(ctx.section("surgery").get("passes") or [])
    if not passes:
        raise StageSkipped("surgery.passes is empty")
    source = ctx.artifacts.reference_graph
    assert source is not None
    names = "_".join(p if isinstance(p, str) else str(p["name"]) for p in passes)
    out = ctx.run_dir / f"model.{names}.onnx"
    reports = run_passes(source, out, passes)
    report_md = write_atomic(ctx.run_dir / "surgery.md", reports_markdown(reports))
    write_atomic(ctx.run_dir / "surgery.json", json.dumps([r.to_dict() for r in reports], indent=2))
    ctx.artifacts.surgered_onnx = out
    ctx.artifacts.reports["surgery"] = report_md
    return StageResult(outputs=[out, report_md], record={"surgery": [r.name for r in reports]})
