"""Non-invasive layer-wise compare of an OpenVINO compile, proved not to change what it measures.

`mark all` (Polygraphy) makes every tensor an output, which breaks every fusion: it measures another
model, and on large models runs out of memory. Here only the tensors the compiled model really
materialises are marked: from the unmarked compile's runtime layers, each layer's ONNX outputs that
leave the layer. The marked compile is then checked against the unmarked one (final outputs
bit-identical on the same feeds, same fusion groups); markings that change either are found by
bisection, dropped and named. Each kept boundary is compared with ONNX Runtime (reference mode),
statistics streamed feed by feed. Boundaries are grouped into modules (torch-export name prefixes,
or ONNX-order chunks for flat names) for a per-module INT8-vs-FP32 latency and error table, and the
modules over an error threshold become a float-exclusion recipe.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rtq.backends.openvino.compile import OpenVinoSettings
from rtq.compare.noninvasive_modules import OnnxIndex
from rtq.compare.noninvasive_probe import (
    Feed,
    NonInvasiveOptions,
    StreamingStats,
    prove_markings,
    run_compiled,
)
from rtq.errors import UserError, exit_on_user_error
from rtq.files import write_atomic


def noninvasive_compare(
    target: str | Path,
    reference: str | Path,
    feeds: Iterable[Feed],
    out_dir: str | Path,
    settings: OpenVinoSettings | None = None,
    options: NonInvasiveOptions | None = None,
    fp32: str | Path | None = None,
) -> dict[str, Any]:
    """Prove the probe, stream per-boundary errors vs `reference` in ORT, write report.json/.md
    (and, with `fp32`, the per-module table and `exclusion_recipe.yaml`). Returns the report."""
    from rtq.backends.onnxruntime import make_graph_runner
    from rtq.compare import noninvasive_modules as nm

    settings, options = settings or OpenVinoSettings(), options or NonInvasiveOptions()
    target, out = Path(target), Path(out_dir)
    feeds = list(feeds)
    if not feeds:
        raise UserError("no feeds to compare on; give at least one image (--images >= 1)")
    proof, kept, final, index, base_layers = prove_markings(target, settings, feeds, options)
    compared = [*kept, *index.outputs]
    ref_names = set(_tensors(reference))
    stats = {t: StreamingStats() for t in compared if t in ref_names}
    modules, how = nm.node_modules(index, _op_types(index), options.chunks, options.module_map)
    fp32_stats: dict[str, StreamingStats] = {}
    fp32_source: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {}
    if fp32 is not None:
        fp32_names = set(_tensors(fp32))
        for t in compared:
            source, dq = nm.source_tensor(index, t), nm.dequantizer(index, t)
            if source in fp32_names and dq is not None:
                fp32_source[t], fp32_stats[t] = (source, dq), StreamingStats()
    extra = [t for t in stats if t not in index.outputs]
    ref_runner = make_graph_runner(reference, "reference", out, "reference", extra or None)
    fp32_runner = (
        make_graph_runner(fp32, "fp32", out, "reference", sorted({s for s, _ in fp32_source.values()}))
        if fp32
        else None
    )
    with ref_runner:
        if fp32_runner is not None:
            fp32_runner.activate()
        for feed, got in zip(feeds, run_compiled(final.compiled, target, feeds, kept), strict=True):
            ref = ref_runner.infer(feed)
            for t, acc in stats.items():
                acc.update(ref[t], got[t])
            if fp32_runner is not None:
                ref32 = fp32_runner.infer(feed)
                for t, (source, dq) in fp32_source.items():
                    fp32_stats[t].update(ref32[source], dq(np.asarray(got[t])))
        if fp32_runner is not None:
            fp32_runner.deactivate()
    rows = [
        {
            "tensor": t,
            "layer_producer": index.producer[t].name if t in index.producer else None,
            **acc.result(),
        }
        for t, acc in stats.items()
    ]
    rank = {n: i for i, n in enumerate(index.order)}
    rows.sort(key=lambda r: rank.get(r["layer_producer"] or "", len(rank)))
    bad = [r for r in rows if r["normalised_error"] > options.threshold]
    report: dict[str, Any] = {
        "target": str(target),
        "reference": str(reference),
        "fp32": str(fp32) if fp32 else None,
        "feeds": len(feeds),
        "settings": settings.record(),
        "threshold": options.threshold,
        **proof,
        "compared": len(rows),
        "exceeding": len(bad),
        "first_diverging": bad[0] if bad else None,
        "invasive_count": len(proof["invasive"]),
        "worst": sorted(rows, key=lambda r: -r["normalised_error"])[: options.worst],
        "boundaries": rows,
        "module_grouping": how,
    }
    if fp32 is not None:
        err = {t: acc.result() for t, acc in fp32_stats.items()}
        int8_us = nm.module_latency(target, settings, feeds, modules, options.timing_runs)
        fp32_modules = {n: modules.get(n, "(not in target)") for n in _node_order(fp32)}
        fp32_us = nm.module_latency(Path(fp32), settings, feeds, fp32_modules, options.timing_runs)
        report["modules"] = nm.module_table(err, index, modules, int8_us, fp32_us)
        report["recipe"] = _write_recipe(report["modules"], options, how, index, modules, out, target)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.json", json.dumps(report, indent=1, default=str))
    write_atomic(out / "report.md", report_markdown(report))
    return report


def _tensors(path: str | Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    return [o for n in model.graph.node for o in n.output if o] + [i.name for i in model.graph.input]


def _node_order(path: str | Path) -> list[str]:
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]


def _op_types(index: OnnxIndex) -> dict[str, str]:
    return {name: node.op_type for name, node in index.nodes.items()}


def _write_recipe(
    rows: list[dict[str, Any]],
    options: NonInvasiveOptions,
    how: str,
    index: OnnxIndex,
    modules: Mapping[str, str],
    out: Path,
    target: Path,
) -> dict[str, Any]:
    import yaml

    from rtq.compare import noninvasive_modules as nm
    from rtq.debug.auto_recipe import write_recipe
    from rtq.quant.recipes import RECIPE_DIR

    torch_names = how.startswith("torch")
    base_path = RECIPE_DIR / f"{options.base_recipe}.yaml"
    base = yaml.safe_load(base_path.read_text()) if torch_names and base_path.is_file() else None
    name = f"{target.stem.replace('.', '_')}_noninvasive_float"
    recipe = nm.exclusion_recipe(
        rows, options.max_module_error, torch_names, name, modules, _op_types(index), base
    )
    path = write_recipe(recipe, out / f"{name}.yaml", f"max module error {options.max_module_error:g}; {how}")
    if torch_names:
        from rtq.quant.recipes import load_recipe

        load_recipe(path)  # the file the quantize stage loads: fail here, not there
    kept = recipe.get("exclude") or recipe.get("exclude_nodes") or []
    return {"path": str(path), "level": "onnx" if not torch_names else "torch", "excluded": kept}


# ---- report ----------------------------------------------------------------------------------------


def _g(value: Any) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _row(r: Mapping[str, Any]) -> str:
    return (
        f"| `{r['tensor']}` | {_g(r.get('normalised_error'))} | {_g(r.get('max_abs'))} | "
        f"{_g(r.get('mean_abs'))} | {_g(r.get('ref_max_abs'))} | {r.get('size', '')} |"
    )


def report_markdown(report: Mapping[str, Any]) -> str:
    """The one-page summary: coverage, the proof, invasive markings, first diverging, worst, modules."""
    names = ", ".join(f"`{n}`" for n in report["changed_nodes"][:6])
    more = " ..." if len(report["changed_nodes"]) > 6 else ""
    changed = "" if report["fusions_unchanged"] else f" (changed, outputs still bit-identical: {names}{more})"
    yes = {True: "yes", False: "**no**"}
    lines = [
        f"# Non-invasive layer-wise compare: `{Path(report['target']).name}`",
        "",
        f"OpenVINO {report['settings']['openvino']} ({report['settings']['inference_precision']}) vs "
        f"ONNX Runtime reference mode on `{Path(report['reference']).name}`, {report['feeds']} feed(s).",
        "",
        f"- boundaries covered: {report['marked']} marked + {report['graph_outputs']} graph outputs "
        f"({report['boundaries_found']} found); layers covered {report['layers_covered']} / "
        f"{report['layers_with_onnx_nodes']} layers with ONNX nodes ({report['executed_layers']} executed)",
        f"- final outputs bit-identical to the unmarked compile: {yes[report['bit_identical']]}"
        f" (unmarked compiled twice agrees with itself: {yes[report['baseline_deterministic']]})",
        f"- proof criterion: {report.get('criterion', 'outputs and fusions')}",
        f"- fusion groups and layer precisions unchanged: {yes[report['fusions_unchanged']]}{changed}; "
        f"layers the marking added (reorders, converts): {report['layers_added_by_marking']}",
        f"- invasive markings dropped: {len(report['invasive'])}; unresolved (budget) dropped: "
        f"{len(report['unresolved_dropped'])}; QuantizeLinear outputs not marked (fused FakeQuantize): "
        f"{report['quantized_skipped']}; compiles used: {report['compiles']}",
        f"- boundaries over normalised error {report['threshold']:g}: {report['exceeding']} / "
        f"{report['compared']}",
        "",
    ]
    if report["invasive"]:
        lines += [
            "## Invasive markings (dropped)",
            "",
            "| tensor | producer | what it changed |",
            "| --- | --- | --- |",
        ]
        lines += [f"| `{i['tensor']}` | `{i['producer']}` | {i['changed']} |" for i in report["invasive"]]
        lines.append("")
    head = [
        "| tensor | norm. err | max abs | mean abs | ref max abs | elements |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    first = report["first_diverging"]
    lines += ["## First diverging boundary (ONNX order)", ""]
    lines += [*head, _row(first), ""] if first else ["none over the threshold", ""]
    lines += [f"## Worst {len(report['worst'])} boundaries", "", *head, *map(_row, report["worst"]), ""]
    if report.get("modules"):
        lines += [
            f"## Modules ({report['module_grouping']})",
            "",
            "Error: worst normalised error of the module's outgoing tensors, INT8 OpenVINO vs FP32 ORT.",
            "",
            "| module | INT8 us | FP32 us | FP32/INT8 | error | worst outgoing tensor |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for m in report["modules"]:
            lines.append(
                f"| `{m['module']}` | {_g(m['int8_us'])} | {_g(m['fp32_us'])} | {_g(m['speedup'])} | "
                f"{_g(m['error'])} | `{m['worst_output'] or ''}` |"
            )
        recipe = report["recipe"]
        lines += [
            "",
            f"Exclusion recipe ({recipe['level']}): `{recipe['path']}`, {len(recipe['excluded'])} "
            f"entries: {', '.join(recipe['excluded'][:12])}",
            "",
        ]
    return "\n".join(lines) + "\n"


# ---- command line ----------------------------------------------------------------------------------


def model_feeds(onnx_path: Path, image_dir: str | Path | None, count: int) -> list[dict[str, np.ndarray]]:
    """Real-image feeds in the model's preprocessing: RT-DETR when it takes `orig_target_sizes`, else
    YOLOX letterbox (BGR 0..255) at the input's side; seeded random feeds without an image folder."""
    from rtq.data.calib import calibration_batches, find_calibration_images
    from rtq.data.coco import load_rgb
    from rtq.models.adapters.yolox import YoloxIO
    from rtq.models.rtdetr import RTDETRIO
    from rtq.paths import data_dir

    if count <= 0:
        raise UserError(f"--images {count} must be positive")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = {i.name: i for i in graph.input}
    folder = image_dir or data_dir("coco_val2017_mini")
    if folder is None:
        from rtq.backends.onnxruntime import make_onnxrt_runner
        from rtq.compare.__main__ import random_feeds

        return random_feeds(make_onnxrt_runner(onnx_path, "reference"), count)
    io: Any = (
        RTDETRIO()
        if "orig_target_sizes" in inputs
        else YoloxIO(
            input_size=inputs[next(iter(inputs))].type.tensor_type.shape.dim[-1].dim_value or 416,
            input_names=(next(iter(inputs)),),
        )
    )
    paths = find_calibration_images(folder)[:count]
    return list(calibration_batches((load_rgb(p) for p in paths), io, 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rtq.compare.noninvasive", description=__doc__)
    p.add_argument("target", help="ONNX file OpenVINO compiles (FP32 or Q/DQ INT8)")
    p.add_argument(
        "--reference", required=True, help="ONNX run in ORT reference mode (often the target itself)"
    )
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the recipe")
    p.add_argument("--fp32", help="FP32 ONNX: per-module latency/error table and exclusion recipe")
    p.add_argument("--images", type=int, default=2, help="number of images to feed")
    p.add_argument("--image-dir", help="image folder (default: the bundled/shared coco_val2017_mini)")
    p.add_argument("--threshold", type=float, default=1e-2, help="normalised error counted as diverging")
    p.add_argument("--max-error", type=float, default=0.1, help="module error above which it is kept float")
    p.add_argument("--chunks", type=int, default=8, help="modules for flat node names (ONNX-order chunks)")
    p.add_argument("--module-map", help="YAML/JSON mapping node-name regex -> module (overrides grouping)")
    p.add_argument("--base-recipe", default="int8_default", help="torch recipe the exclusions extend")
    p.add_argument("--max-compiles", type=int, default=60, help="compile budget of the invasive search")
    p.add_argument("--threads", type=int, help="OpenVINO inference threads")
    p.add_argument(
        "--strict",
        action="store_true",
        help="a marking must also keep fusions and layer precisions (default: bit-identical outputs suffice)",
    )
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    from rtq.compare.noninvasive_modules import load_module_map

    args = build_parser().parse_args(argv)
    for flag, path in (("target", args.target), ("--reference", args.reference), ("--fp32", args.fp32)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {path} does not exist; give an ONNX file")
    options = NonInvasiveOptions(
        threshold=args.threshold,
        max_compiles=args.max_compiles,
        chunks=args.chunks,
        module_map=load_module_map(args.module_map),
        max_module_error=args.max_error,
        base_recipe=args.base_recipe,
        strict=args.strict,
    )
    feeds = model_feeds(Path(args.target), args.image_dir, args.images)
    report = noninvasive_compare(
        args.target,
        args.reference,
        feeds,
        args.out,
        OpenVinoSettings(num_threads=args.threads),
        options,
        args.fp32,
    )
    first = report["first_diverging"]
    print(
        f"{report['marked']} boundaries marked, bit-identical {report['bit_identical']}, fusions unchanged "
        f"{report['fusions_unchanged']}, {len(report['invasive'])} invasive; first diverging: "
        f"{first['tensor'] if first else 'none'}; report: {Path(args.out) / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
