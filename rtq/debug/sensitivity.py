"""Quantization sensitivity: which part of a detector loses accuracy when it runs in INT8?

For each group of nodes (ONNX models) or modules (PyTorch models) two variants are measured:
"only this group quantized" (its own INT8 cost) and "everything quantized except this group" (what
keeping it in float buys back). Each variant gets a fidelity metric (relative L2 error of the raw
outputs against FP32 on calibration images) and, where labels exist, COCO AP. Ranking by what
leaving a group in float buys back is what the auto recipe consumes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rtq.debug.structure import GraphIndex
from rtq.errors import UserError

Feeds = list[dict[str, np.ndarray]]


@dataclass
class Metrics:
    """Fidelity (lower is better) and COCO AP in percent (None without labels)."""

    fidelity: float
    ap: float | None = None
    ap50: float | None = None


@dataclass
class GroupSensitivity:
    """One group's two measurements."""

    group: str
    size: int  # nodes (ONNX) or modules (PyTorch) in the group
    only_quantized: Metrics
    only_float: Metrics


@dataclass
class SensitivityResult:
    """Everything a sensitivity run measured, plus how it was produced."""

    model: str
    fp32: Metrics
    int8: Metrics
    groups: list[GroupSensitivity]
    fidelity_metric: str = "relative L2 error of raw outputs vs FP32"
    command: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def ranked(self) -> list[GroupSensitivity]:
        """Most sensitive first: largest AP recovered by leaving the group in float (fidelity if no AP)."""
        return sorted(self.groups, key=lambda g: -recovery(self, g))


def recovery(result: SensitivityResult, group: GroupSensitivity) -> float:
    """What keeping `group` in float buys back: AP points, or the fidelity error removed."""
    if group.only_float.ap is not None and result.int8.ap is not None:
        return group.only_float.ap - result.int8.ap
    return result.int8.fidelity - group.only_float.fidelity


def relative_l2(
    reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]]
) -> float:
    """||q - f|| / ||f|| over every float output of every image: one number, scale-free."""
    num = 0.0
    den = 0.0
    for ref, got in zip(reference, candidate, strict=True):
        for name, value in ref.items():
            if not np.issubdtype(np.asarray(value).dtype, np.floating):
                continue
            diff = np.asarray(got[name], np.float64) - np.asarray(value, np.float64)
            num += float(np.sum(diff * diff))
            den += float(np.sum(np.asarray(value, np.float64) ** 2))
    return float(np.sqrt(num / max(den, 1e-30)))


def sorted_scores_l2(
    reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]]
) -> float:
    """`relative_l2` of each image's detection scores sorted high to low: blind to detection order.

    An RT-DETR's top-k detections come from a top-k over near-tied encoder scores, so any change
    anywhere reorders them and a positional comparison reads the same large error for every group;
    the sorted score profile moves with how much quantization shifts the confidences.
    """

    def profile(outputs: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{"scores": -np.sort(-np.asarray(o["scores"], np.float64), axis=-1)} for o in outputs]

    return relative_l2(profile(reference), profile(candidate))


# ---------------------------------------------------------------- ONNX node groups (YOLOX)


def _conv_resolution(index: GraphIndex, model: onnx.ModelProto) -> dict[str, int]:
    """Output height of every Conv node, from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    heights: dict[str, int] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].HasField("dim_value"):
            heights[info.name] = dims[2].dim_value
    return {
        n.name: heights[n.output[0]] for n in index.nodes if n.op_type == "Conv" and n.output[0] in heights
    }


def _ancestors(index: GraphIndex, tensor: str) -> set[str]:
    """Names of all nodes that `tensor` depends on."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        node = index.producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def yolox_node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Split a YOLOX ONNX graph into stem, dark2..dark5, neck and one head per stride.

    Exported YOLOX node names carry no module path (`Conv_41`), so the split is structural: the
    per-stride head branches are the inputs of the last multi-input Concat before the output (each
    branch's exclusive ancestors form its head); the backbone is every node before the lateral conv
    that feeds the first Resize (top-down FPN path), split into stages by output resolution; the
    rest is the neck.
    """
    index = GraphIndex(model)
    order = {n.name: i for i, n in enumerate(index.nodes)}
    tensor = model.graph.output[0].name
    node = index.producer.get(tensor)
    while node is not None and not (node.op_type == "Concat" and len(node.input) >= 2):
        node = index.producer.get(node.input[0])
    if node is None:
        raise UserError("no multi-input Concat before the output: not a YOLOX-style head")
    branches = list(node.input)
    ancestry = {b: _ancestors(index, b) for b in branches}
    heights = _conv_resolution(index, model)
    exclusive = {}
    for branch in branches:
        others = set().union(*(ancestry[b] for b in branches if b != branch))
        exclusive[branch] = sorted(ancestry[branch] - others, key=order.__getitem__)
    # Heads per stride are identical; a branch's exclusive part longer than the shortest one also
    # holds neck nodes only that stride uses (the last bottom-up block), which belong to the neck.
    head_size = min(len(nodes) for nodes in exclusive.values())
    input_height = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value or 0
    groups: dict[str, list[str]] = {}
    head_nodes: set[str] = set()
    for position, branch in enumerate(branches):
        own = exclusive[branch][-head_size:]
        conv_heights = sorted({heights[n] for n in own if n in heights})
        stride = input_height // conv_heights[0] if conv_heights and input_height else position
        groups[f"head_s{stride}"] = own
        head_nodes |= set(own)
    first_resize = next((n for n in index.nodes if n.op_type == "Resize"), None)
    if first_resize is None:
        raise UserError("no Resize node: cannot find the FPN neck of this YOLOX graph")
    lateral = index.producer.get(first_resize.input[0])
    while lateral is not None and lateral.op_type != "Conv":
        lateral = index.producer.get(lateral.input[0])
    neck_start = order[lateral.name] if lateral is not None else order[first_resize.name]
    backbone: dict[int, list[str]] = {}
    stage_height = next(heights[n.name] for n in index.nodes if n.name in heights)  # pre-conv ops: stem
    for n in index.nodes:
        if order[n.name] >= neck_start:
            break
        if n.name in heights:
            stage_height = heights[n.name]
        backbone.setdefault(stage_height, []).append(n.name)
    named: dict[str, list[str]] = {}
    for rank, height in enumerate(sorted(backbone, reverse=True)):
        named["stem" if rank == 0 else f"dark{rank + 1}"] = backbone[height]
    in_backbone = {n for nodes in named.values() for n in nodes}
    named["neck"] = [n.name for n in index.nodes if n.name not in in_backbone and n.name not in head_nodes]
    named.update(dict(sorted(groups.items(), key=lambda kv: int(kv[0].removeprefix("head_s")))))
    return named


def _exact(names: Sequence[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]


def _run_onnx(path: Path, feeds: Feeds) -> list[dict[str, np.ndarray]]:
    from rtq.backends.onnxruntime import make_onnxrt_runner

    runner = make_onnxrt_runner(path, mode="fast")
    with runner:
        return [{k: np.array(v) for k, v in runner.infer(feed).items()} for feed in feeds]


def _coco_ap_onnx(
    path: Path, coco_root: Path | None, max_images: int | None
) -> tuple[float | None, float | None]:
    if coco_root is None:
        return None, None
    from rtq.backends.onnxruntime import make_onnxrt_runner
    from rtq.data.coco import CocoDataset
    from rtq.evaluate.loop import evaluate_detector
    from rtq.models.adapters.yolox import YoloxIO

    dataset = CocoDataset(coco_root, max_images=max_images)
    result = evaluate_detector(make_onnxrt_runner(path, mode="fast"), YoloxIO(), dataset, 1, progress=False)
    return result.stats["ap"], result.stats["ap50"]


class OnnxProbe:
    """Quantizes an ONNX model with some node groups left in float and measures the result."""

    def __init__(
        self,
        onnx_path: str | Path,
        calib_feeds: Feeds,
        groups: dict[str, list[str]],
        coco_root: str | Path | None = None,
        eval_images: int | None = None,
        method: str = "max",
        work_dir: str | Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.calib_feeds = calib_feeds
        self.groups = groups
        self.coco_root = Path(coco_root) if coco_root is not None else None
        self.eval_images = eval_images
        self.method = method
        self.work = Path(work_dir or tempfile.mkdtemp(prefix="rtq_sensitivity_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.reference = _run_onnx(self.onnx_path, calib_feeds)

    def fp32(self) -> Metrics:
        ap, ap50 = _coco_ap_onnx(self.onnx_path, self.coco_root, self.eval_images)
        self.log(f"  {'fp32':<28} AP {ap}")
        return Metrics(0.0, ap, ap50)

    def float_nodes(self, float_groups: Sequence[str]) -> list[str]:
        """Node-name regexes (anchored) of the groups to leave in float."""
        return _exact([n for g in float_groups for n in self.groups[g]])

    def measure(self, float_groups: Sequence[str], tag: str | None = None) -> Metrics:
        """Quantize everything except `float_groups`, return fidelity and AP."""
        if tag is None:
            tag = "float_" + "+".join(float_groups) if float_groups else "int8_all"
        out = self.work / f"{tag}.onnx"
        quantize_onnx_excluding(
            self.onnx_path, out, self.calib_feeds, self.method, self.float_nodes(float_groups)
        )
        fidelity = relative_l2(self.reference, _run_onnx(out, self.calib_feeds))
        ap, ap50 = _coco_ap_onnx(out, self.coco_root, self.eval_images)
        self.log(f"  {tag:<28} fidelity {fidelity:.4f}  AP {ap}")
        return Metrics(fidelity, ap, ap50)


def quantize_onnx_excluding(
    src: Path, out: Path, calib_feeds: Feeds, method: str, exclude: list[str]
) -> Path:
    """`quantize_onnx` with node exclusions (separate so tests can see what is excluded)."""
    from rtq.quant.onnx_ptq import quantize_onnx

    return quantize_onnx(src, out, calib_feeds, method=method, exclude_nodes=exclude)


def onnx_sensitivity(probe: OnnxProbe) -> SensitivityResult:
    """Per group: quantize only it, and quantize everything but it (the float-fallback gain)."""
    started = time.perf_counter()
    fp32 = probe.fp32()
    int8 = probe.measure([])
    rows = []
    for name, nodes in probe.groups.items():
        others = [g for g in probe.groups if g != name]
        rows.append(
            GroupSensitivity(
                group=name,
                size=len(nodes),
                only_quantized=probe.measure(others, tag=f"only_{name}_int8"),
                only_float=probe.measure([name], tag=f"only_{name}_float"),
            )
        )
    return SensitivityResult(
        model=probe.onnx_path.stem,
        fp32=fp32,
        int8=int8,
        groups=rows,
        seconds=time.perf_counter() - started,
        settings={
            "calibration_images": sum(len(next(iter(f.values()))) for f in probe.calib_feeds),
            "method": probe.method,
            "eval_images": probe.eval_images,
            "coco_root": str(probe.coco_root) if probe.coco_root else None,
        },
    )


class TorchProbe:
    """Quantizes a PyTorch model (modelopt fake-quant) with some module groups left in float.

    Fidelity only: the relative L2 error of the outputs against the FP32 model on the calibration
    feeds (AP would need the whole evaluation per variant; the pipeline measures the chosen one).
    """

    def __init__(
        self,
        model_factory: Callable[[], Any],
        calib_feeds: Feeds,
        groups: dict[str, str],
        recipe: str = "int8_default",
        log: Callable[[str], None] = print,
        metric: Callable[
            [Sequence[dict[str, np.ndarray]], Sequence[dict[str, np.ndarray]]], float
        ] = relative_l2,
        metric_name: str = "relative L2 error of the outputs vs FP32",
    ) -> None:
        import torch

        from rtq.quant.recipes import load_recipe

        self.metric, self.metric_name = metric, metric_name
        self.model_factory = model_factory
        self.calib_feeds = calib_feeds
        self.groups = groups
        self.recipe = recipe
        self.base = load_recipe(recipe)
        self.log = log
        self.tensors = [{k: torch.from_numpy(v) for k, v in f.items()} for f in calib_feeds]
        self.reference = self._outputs(model_factory().eval())

    def _outputs(self, model: Any) -> list[dict[str, np.ndarray]]:
        import torch

        results = []
        with torch.no_grad():
            for feed in self.tensors:
                out = model(**feed)
                if not isinstance(out, dict):
                    out = dict(zip(("labels", "boxes", "scores"), out, strict=False))
                results.append({k: v.float().numpy() for k, v in out.items()})
        return results

    def measure(self, float_groups: Sequence[str], tag: str | None = None) -> Metrics:
        """Quantize everything except `float_groups` (recipe exclusions), return the fidelity."""
        import modelopt.torch.quantization as mtq

        from rtq.quant.recipes import to_quant_cfg

        if tag is None:
            tag = "float_" + "+".join(float_groups) if float_groups else "int8_all"
        exclude = [self.groups[g] for g in float_groups]
        recipe_now = type(self.base)(
            **{**asdict_shallow(self.base), "exclude": [*self.base.exclude, *exclude]}
        )
        try:
            calibrate = lambda m: [m(**f) for f in self.tensors]  # noqa: E731 - modelopt's forward loop
            model = mtq.quantize(self.model_factory().eval(), to_quant_cfg(recipe_now), calibrate)
        except RuntimeError as error:
            if "nothing would be quantized" not in str(error):
                raise
            self.log(f"  {tag:<28} nothing left to quantize: the FP32 model")
            return Metrics(0.0)
        fidelity = self.metric(self.reference, self._outputs(model))
        self.log(f"  {tag:<28} fidelity {fidelity:.4f}")
        return Metrics(fidelity)


def torch_sensitivity(probe: TorchProbe) -> SensitivityResult:
    """Fidelity sensitivity of a PyTorch model: per group, quantize only it and everything but it."""
    started = time.perf_counter()
    int8 = probe.measure([])
    rows = []
    for name in probe.groups:
        others = [g for g in probe.groups if g != name]
        rows.append(
            GroupSensitivity(
                name,
                1,
                probe.measure(others, tag=f"only_{name}_int8"),
                probe.measure([name], tag=f"only_{name}_float"),
            )
        )
    return SensitivityResult(
        model="pytorch",
        fp32=Metrics(0.0),
        int8=int8,
        groups=rows,
        fidelity_metric=probe.metric_name,
        seconds=time.perf_counter() - started,
        settings={
            "recipe": probe.recipe,
            "calibration_images": sum(len(next(iter(f.values()))) for f in probe.calib_feeds),
        },
    )


def asdict_shallow(obj: Any) -> dict[str, Any]:
    """Dataclass fields without deep-copying nested dataclasses (a recipe's rules stay objects)."""
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


# ---------------------------------------------------------------- reports


def _bar(value: float, scale: float, width: int = 30) -> str:
    filled = int(round(width * max(value, 0.0) / scale)) if scale > 0 else 0
    return "█" * filled + "·" * (width - filled)


def render_markdown(result: SensitivityResult) -> str:
    """Ranked table plus a text bar chart of what leaving each group in float recovers."""
    has_ap = result.int8.ap is not None
    lines = [f"# Quantization sensitivity: {result.model}", ""]
    if result.command:
        lines += ["Produced by:", "", "```", result.command, "```", ""]
    lines += [
        f"- fidelity metric: {result.fidelity_metric} (calibration images)",
        f"- FP32: AP {result.fp32.ap}  |  all INT8: AP {result.int8.ap}, fidelity {result.int8.fidelity:.4f}",
        f"- settings: {json.dumps(result.settings)}",
        f"- time: {result.seconds:.0f} s",
        "",
    ]
    header = "| rank | group | size | only this INT8: fidelity | only this float: fidelity |"
    rule = "| --- | --- | --- | --- | --- |"
    if has_ap:
        header += " only this INT8: AP | only this float: AP | AP recovered |"
        rule += " --- | --- | --- |"
    lines += [header, rule]
    ranked = result.ranked()
    for rank, g in enumerate(ranked, 1):
        row = (
            f"| {rank} | {g.group} | {g.size} "
            f"| {g.only_quantized.fidelity:.4f} | {g.only_float.fidelity:.4f} |"
        )
        if has_ap:
            row += f" {g.only_quantized.ap:.2f} | {g.only_float.ap:.2f} | {recovery(result, g):+.2f} |"
        lines.append(row)
    what = "AP points recovered by keeping the group in float" if has_ap else "fidelity error removed"
    scale = max((recovery(result, g) for g in ranked), default=0.0)
    lines += ["", f"## {what}", "", "```"]
    for g in ranked:
        lines.append(f"{g.group:>20} {_bar(recovery(result, g), scale)} {recovery(result, g):+.3f}")
    lines += ["```", ""]
    return "\n".join(lines)


def load_result(path: str | Path) -> SensitivityResult:
    """Read a `write_reports` JSON back, so a recipe can be derived without measuring again."""
    source = Path(path)
    if not source.is_file():
        raise UserError(
            f"sensitivity JSON {str(source)!r} does not exist; run `python -m rtq.debug sensitivity` first"
        )
    data = json.loads(source.read_text())
    try:
        groups = [
            GroupSensitivity(
                group=g["group"],
                size=int(g["size"]),
                only_quantized=Metrics(**g["only_quantized"]),
                only_float=Metrics(**g["only_float"]),
            )
            for g in data["groups"]
        ]
        return SensitivityResult(
            model=data["model"],
            fp32=Metrics(**data["fp32"]),
            int8=Metrics(**data["int8"]),
            groups=groups,
            fidelity_metric=data.get("fidelity_metric", ""),
            command=data.get("command", ""),
            settings=dict(data.get("settings") or {}),
            seconds=float(data.get("seconds", 0.0)),
        )
    except (KeyError, TypeError) as err:
        raise UserError(f"{str(source)!r} is not a sensitivity JSON (missing {err}); regenerate it") from None


def write_reports(
    result: SensitivityResult, out_dir: str | Path, stem: str = "sensitivity"
) -> tuple[Path, Path]:
    """`<stem>.json` and `<stem>.md` in `out_dir`, each written under a temporary name first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / f"{stem}.json", out / f"{stem}.md")
    texts = (json.dumps(asdict(result), indent=2) + "\n", render_markdown(result))
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths
