"""Compare a target runner against a reference runner on the same feeds, output-wise or layer-wise.

Both sides are Polygraphy runners (ONNX Runtime, TensorRT, or the PyTorch runner), so the run itself
is Polygraphy's ``Comparator.run`` and the saved ``RunResults`` JSON opens in ``polygraphy inspect``.
On top of Polygraphy's pass/fail (``CompareFunc.simple``) this adds what a person needs to judge an
INT8 engine: error percentiles per output, an order-independent detection match, and in layer-wise
mode the first tensors (topological order) where the target departs from the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from rtq.backends.onnxruntime import make_graph_runner
from rtq.compare.metrics import detection_match_report, error_stats, normalised_error
from rtq.errors import UserError
from rtq.models.io import DETECTION_OUTPUTS


@dataclass
class CompareSettings:
    """Tolerances and selection rules; ``layer_threshold`` is max |err| / max |reference| per tensor."""

    atol: float = 1e-3
    rtol: float = 1e-3
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    top_k: int | None = None
    layer_threshold: float = 1e-2
    max_listed: int = 10


def _iterations(results: Any, runner_name: str) -> list[Mapping[str, np.ndarray]]:
    for name, iterations in results:
        if name == runner_name:
            return [{k: np.asarray(v) for k, v in it.items()} for it in iterations]
    raise KeyError(runner_name)


def _stack(iterations: Sequence[Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(it[name]).reshape(-1) for it in iterations])


Decode = Callable[[int, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def compare_runners(reference: Any, target: Any, feeds: Iterable[Mapping[str, np.ndarray]],
                    out_dir: str | Path,
                    settings: CompareSettings | None = None, model_outputs: Sequence[str] | None = None,
                    tensor_order: Sequence[str] | None = None, decode: Decode | None = None,
                    notes: Sequence[str] = ()) -> dict[str, Any]:
    """Run both runners on ``feeds`` and write ``results.json``, ``report.json`` and ``report.md``.

    model_outputs: the tensors reported as outputs (default: all tensors both sides return).
    tensor_order: topological order of all compared tensors; given -> layer-wise section.
    decode: (feed index, raw outputs) -> labels/boxes/scores with a batch axis, for models whose
    graph ends before detections (YOLOX): the detection match then runs on the decoded outputs.
    notes: lines the report shows above the tables (what the comparison changed, e.g. marking).
    Returns the report dict.
    """
    from polygraphy.comparator import Comparator, CompareFunc

    from rtq.compare.report import write_report

    settings = settings or CompareSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feeds = list(feeds)
    if not feeds:
        raise UserError("no feeds to compare on; give at least one image (--num-images >= 1)")
    if reference.name == target.name:
        raise UserError(f"reference and target runners share the name {reference.name!r}; name them apart")
    results = Comparator.run([reference, target], data_loader=feeds)
    results.save(str(out / "results.json"))
    ref_its = _iterations(results, reference.name)
    tgt_its = _iterations(results, target.name)
    common = [n for n in ref_its[0] if n in tgt_its[0]]
    outputs = [n for n in (model_outputs or common) if n in common]
    if not outputs:
        raise UserError(f"reference outputs {sorted(ref_its[0])[:8]} and target outputs "
                        f"{sorted(tgt_its[0])[:8]} share no name; compare models with the same outputs")

    accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(
        atol=settings.atol, rtol=settings.rtol, error_quantile=0.99, find_output_func=lambda name, _i, _r: (
            [name] if name in outputs else [])))
    passed: dict[str, bool] = {n: True for n in outputs}
    # Polygraphy returns one AccuracyResult (older) or a list of them, one per compare function.
    for acc in ([accuracy] if hasattr(accuracy, "items") else list(accuracy)):
        for _pair, iterations in acc.items():
            for iteration in iterations:
                for name, res in iteration.items():
                    passed[name] = passed.get(name, True) and bool(res)

    per_output = {}
    for name in outputs:
        same_shapes = all(np.asarray(r[name]).shape == np.asarray(t[name]).shape
                          for r, t in zip(ref_its, tgt_its, strict=True))
        stats = error_stats(_stack(ref_its, name), _stack(tgt_its, name)) if same_shapes else {
            "shape_mismatch": True, "reference_shape": list(ref_its[0][name].shape),
            "target_shape": list(tgt_its[0][name].shape)}
        per_output[name] = {**stats, "polygraphy_passed": passed.get(name, False)}

    report: dict[str, Any] = {
        "reference": reference.name,
        "target": target.name,
        "iterations": len(feeds),
        "settings": asdict(settings),
        "outputs": per_output,
        "results_json": "results.json",
    }
    if notes:
        report["notes"] = list(notes)
    if all(k in common for k in DETECTION_OUTPUTS):
        report["detections"] = detection_match_report(ref_its, tgt_its, settings.score_threshold,
                                                      settings.iou_threshold, settings.top_k)
    elif decode is not None:
        report["detections"] = detection_match_report(
            [decode(i, it) for i, it in enumerate(ref_its)], [decode(i, it) for i, it in enumerate(tgt_its)],
            settings.score_threshold, settings.iou_threshold, settings.top_k)
    if tensor_order is not None:
        report["layerwise"] = _layerwise(ref_its, tgt_its, [n for n in tensor_order if n in common], settings)
    report["summary"] = _summary(report)
    write_report(report, out)
    return report


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a results table shows for one comparison."""
    outputs = report["outputs"].values()
    summary: dict[str, Any] = {
        "all_outputs_passed": all(o.get("polygraphy_passed", False) for o in outputs),
        "max_abs_error": max((float(o.get("max_abs", float("inf"))) for o in outputs), default=0.0),
    }
    if "detections" in report:
        summary["detections_matched_fraction"] = report["detections"]["matched_fraction"]
        summary["score_abs_error_max"] = report["detections"]["score_abs_error_max"]
    if "layerwise" in report:
        first = report["layerwise"]["first_exceeding"]
        summary["first_diverging_tensor"] = first[0]["tensor"] if first else None
    return summary


def _layerwise(ref_its: Sequence[Mapping[str, np.ndarray]], tgt_its: Sequence[Mapping[str, np.ndarray]],
               order: Sequence[str], settings: CompareSettings) -> dict[str, Any]:
    rows = []
    for name in order:
        if any(np.asarray(r[name]).shape != np.asarray(t[name]).shape
               for r, t in zip(ref_its, tgt_its, strict=True)):
            stats: dict[str, Any] = {"shape_mismatch": True}
        else:
            stats = error_stats(_stack(ref_its, name), _stack(tgt_its, name))
        rows.append({"tensor": name, "normalised_error": normalised_error(stats), **stats})
    bad = [r for r in rows if r["normalised_error"] > settings.layer_threshold]
    worst = sorted(rows, key=lambda r: -r["normalised_error"])[: settings.max_listed]
    return {"threshold": settings.layer_threshold, "compared_tensors": len(rows),
            "exceeding": len(bad), "first_exceeding": bad[: settings.max_listed], "worst": worst,
            "all": rows}


# ---- ONNX on both sides ----------------------------------------------------------------------------

def topological_tensors(model: onnx.ModelProto) -> list[str]:
    """Every computed tensor name in node order (exported graphs are topologically sorted)."""
    return [o for node in model.graph.node for o in node.output if o]


MakeTarget = Callable[[Path, Any], Any]


def compare_onnx(reference: str | Path, target: str | Path, feeds: Iterable[Mapping[str, np.ndarray]],
                 out_dir: str | Path, settings: CompareSettings | None = None, layerwise: bool = False,
                 layer_regex: str | None = None,
                 target_mode: Literal["reference", "fast"] = "reference",
                 make_target: MakeTarget | None = None, decode: Decode | None = None,
                 notes: Sequence[str] = ()) -> dict[str, Any]:
    """Compare two ONNX variants: ONNX Runtime (reference mode) on the reference side; on the target
    side ONNX Runtime in `target_mode`, or `make_target(path, extra_outputs)` (a compiler's runner)."""
    out = Path(out_dir)
    ref_model = onnx.load(str(reference), load_external_data=False)
    outputs = [o.name for o in ref_model.graph.output]
    order: list[str] | None = None
    extra: Any = None
    if layerwise:
        order = topological_tensors(ref_model)
        if layer_regex:
            try:
                rx = re.compile(layer_regex)
            except re.error as err:
                raise UserError(f"--layer-regex {layer_regex!r} is not a valid regex: {err}") from None
            tgt_names = set(topological_tensors(onnx.load(str(target), load_external_data=False)))
            order = [n for n in order if rx.search(n) and n in tgt_names]
            if not order:
                raise UserError(f"--layer-regex {layer_regex!r} matches no tensor present in both models")
            extra = order
        else:
            extra = "all"
    ref_runner = make_graph_runner(reference, "reference", out, "reference", extra)
    tgt_runner = (make_graph_runner(target, "target", out, target_mode, extra) if make_target is None
                  else make_target(Path(target), extra))
    return compare_runners(ref_runner, tgt_runner, feeds, out, settings, model_outputs=outputs,
                           tensor_order=order, decode=decode, notes=notes)
