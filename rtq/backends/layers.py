"""The compiled-model layer schema every compiler inspector fills, and the fusion diff over it.

TensorRT's engine inspector (`rtq.backends.tensorrt.inspect`) and OpenVINO's runtime model
(`rtq.backends.openvino.inspect`) both become a list of `EngineLayer`: name, type, precisions,
the ONNX nodes the layer covers, time. The diff matches layers by the set of ONNX nodes they
cover, not by name (compilers rename layers between builds), so it works across two builds of one
compiler (direct vs extra-outputs graph, recipe A vs B) and across compilers where both name the
ONNX nodes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtq.files import write_atomic


@dataclass(frozen=True)
class EngineLayer:
    """One compiled layer: what it runs, in which precision, which ONNX nodes it covers, its time."""

    name: str
    type: str
    tactic: str
    input_precisions: tuple[str, ...]
    output_precisions: tuple[str, ...]
    onnx_nodes: tuple[str, ...]
    # Compute precision where the compiler reports one (OpenVINO's runtimePrecision), and the
    # layer's measured time in microseconds when profiling was on; None when unknown.
    precision: str = ""
    time_us: float | None = None

    @property
    def group_key(self) -> frozenset[str]:
        """Identity across builds: the ONNX nodes; layers without metadata fall back to the name."""
        return frozenset(self.onnx_nodes) if self.onnx_nodes else frozenset({f"<layer>{self.name}"})




def save_layer_list(layers: Sequence[EngineLayer], path: Path) -> Path:
    """`layers.json` in the schema above (what `load_layer_list` reads back)."""
    write_atomic(Path(path), json.dumps([asdict(layer) for layer in layers], indent=2))
    return Path(path)


def load_layer_list(path: Path) -> list[EngineLayer]:
    """Layers from a `layers.json` written by `save_layer_list`."""
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path} is not a layer list (a JSON array of layers)")
    return [_layer_from_dict(row) for row in rows]


def _layer_from_dict(row: dict[str, Any]) -> EngineLayer:
    tuples = ("input_precisions", "output_precisions", "onnx_nodes")
    fields: dict[str, Any] = {key: tuple(value) if key in tuples else value for key, value in row.items()}
    return EngineLayer(**fields)


@dataclass
class FusionChange:
    """ONNX nodes that TensorRT grouped differently in engine A and engine B."""

    onnx_nodes: list[str]
    layers_a: list[EngineLayer]
    layers_b: list[EngineLayer]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)


@dataclass
class PrecisionChange:
    """Same ONNX nodes fused the same way, but a different layer type or I/O precision."""

    onnx_nodes: list[str]
    layer_a: EngineLayer
    layer_b: EngineLayer


@dataclass
class EngineDiff:
    name_a: str
    name_b: str
    layer_count_a: int
    layer_count_b: int
    fusion_changes: list[FusionChange]
    precision_changes: list[PrecisionChange]

    @property
    def identical_fusions(self) -> bool:
        return not self.fusion_changes

    def to_dict(self) -> dict[str, Any]:
        counts = {"fusion_change_count": len(self.fusion_changes),
                  "precision_change_count": len(self.precision_changes)}
        return {**asdict(self), **counts}


def _by_group(layers: Iterable[EngineLayer]) -> dict[frozenset[str], list[EngineLayer]]:
    groups: dict[frozenset[str], list[EngineLayer]] = defaultdict(list)
    for layer in layers:
        groups[layer.group_key].append(layer)
    return groups


def _components(groups: Iterable[frozenset[str]]) -> list[set[str]]:
    """Connected components of node sets that share a node (union-find over node names)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in groups:
        members = sorted(group)
        for other in members[1:]:
            parent[find(other)] = find(members[0])
        if members:
            find(members[0])
    components: dict[str, set[str]] = defaultdict(set)
    for node in parent:
        components[find(node)].add(node)
    return sorted(components.values(), key=lambda c: sorted(c)[0])


def diff_engines(
    layers_a: Sequence[EngineLayer],
    layers_b: Sequence[EngineLayer],
    name_a: str = "a",
    name_b: str = "b",
    ignore_unmapped: bool = False,
) -> EngineDiff:
    """Which fused groups differ between two engines, and which same groups changed precision.

    `ignore_unmapped` leaves out layers that cover no ONNX node (OpenVINO's own reorders and
    reshapes, named with counters that change between compiles, so they would all "differ")."""
    if ignore_unmapped:
        layers_a = [layer for layer in layers_a if layer.onnx_nodes]
        layers_b = [layer for layer in layers_b if layer.onnx_nodes]
    groups_a, groups_b = _by_group(layers_a), _by_group(layers_b)
    unmatched_a = [g for g in groups_a if g not in groups_b]
    unmatched_b = [g for g in groups_b if g not in groups_a]
    nodes_a = set().union(*groups_a) if groups_a else set()
    nodes_b = set().union(*groups_b) if groups_b else set()

    changes: list[FusionChange] = []
    for component in _components(unmatched_a + unmatched_b):
        changes.append(
            FusionChange(
                onnx_nodes=sorted(component),
                layers_a=[layer for g in unmatched_a if g & component for layer in groups_a[g]],
                layers_b=[layer for g in unmatched_b if g & component for layer in groups_b[g]],
                only_in_a=sorted(component & (nodes_a - nodes_b)),
                only_in_b=sorted(component & (nodes_b - nodes_a)),
            )
        )

    precision_changes: list[PrecisionChange] = []
    for group, in_a in groups_a.items():
        in_b = groups_b.get(group)
        if not in_b:
            continue
        for layer_a, layer_b in zip(in_a, in_b, strict=False):
            signature_a = (layer_a.type, layer_a.input_precisions, layer_a.output_precisions)
            signature_b = (layer_b.type, layer_b.input_precisions, layer_b.output_precisions)
            if signature_a != signature_b:
                precision_changes.append(PrecisionChange(sorted(group), layer_a, layer_b))

    return EngineDiff(name_a, name_b, len(layers_a), len(layers_b), changes, precision_changes)


def _cell(text: str, limit: int = 120) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _layer_line(layer: EngineLayer) -> str:
    ins = ",".join(layer.input_precisions) or "?"
    outs = ",".join(layer.output_precisions) or "?"
    return f"`{_cell(layer.name, 80)}` ({layer.type or '?'}, {ins} -> {outs})"


def layers_markdown(layers: Sequence[EngineLayer], title: str = "Engine layers") -> str:
    lines = [
        f"# {title}",
        "",
        f"{len(layers)} layers.",
        "",
        "| # | layer | type | in | out | ONNX nodes | tactic |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, layer in enumerate(layers):
        nodes = f"{len(layer.onnx_nodes)}: " + ", ".join(layer.onnx_nodes[:3]) if layer.onnx_nodes else ""
        if len(layer.onnx_nodes) > 3:
            nodes += ", ..."
        lines.append(
            f"| {index} | {_cell(layer.name, 60)} | {layer.type} | {','.join(layer.input_precisions)} | "
            f"{','.join(layer.output_precisions)} | {_cell(nodes)} | {_cell(layer.tactic, 60)} |"
        )
    return "\n".join(lines) + "\n"


def diff_markdown(diff: EngineDiff) -> str:
    lines = [
        f"# Engine fusion diff: {diff.name_a} vs {diff.name_b}",
        "",
        f"Layers: {diff.name_a} {diff.layer_count_a}, {diff.name_b} {diff.layer_count_b}. "
        f"Fusion changes: {len(diff.fusion_changes)}. Precision/type changes: {len(diff.precision_changes)}.",
        "",
    ]
    for index, change in enumerate(diff.fusion_changes, 1):
        lines.append(f"## Fusion change {index} ({len(change.onnx_nodes)} ONNX nodes)")
        lines.append("")
        if change.only_in_a:
            lines.append(f"- only in {diff.name_a}: " + ", ".join(f"`{n}`" for n in change.only_in_a))
        if change.only_in_b:
            lines.append(f"- only in {diff.name_b}: " + ", ".join(f"`{n}`" for n in change.only_in_b))
        lines.append(f"- {diff.name_a}: " + ("; ".join(_layer_line(x) for x in change.layers_a) or "none"))
        lines.append(f"- {diff.name_b}: " + ("; ".join(_layer_line(x) for x in change.layers_b) or "none"))
        lines.append("")
    if diff.precision_changes:
        lines += ["## Same fusion, different type or precision", ""]
        lines += ["| ONNX nodes | " + diff.name_a + " | " + diff.name_b + " |", "| --- | --- | --- |"]
        for pc in diff.precision_changes:
            lines.append(
                f"| {_cell(', '.join(pc.onnx_nodes))} | {_cell(_layer_line(pc.layer_a))} | "
                f"{_cell(_layer_line(pc.layer_b))} |"
            )
    return "\n".join(lines) + "\n"


def write_layers_report(
    layers: Sequence[EngineLayer], out_stem: Path, title: str = "Engine layers"
) -> tuple[Path, Path]:
    """Write `<out_stem>.json` and `<out_stem>.md`; returns both paths."""
    out_stem = Path(out_stem)
    json_path, md_path = out_stem.with_suffix(".json"), out_stem.with_suffix(".md")
    write_atomic(json_path, json.dumps([asdict(layer) for layer in layers], indent=2))
    write_atomic(md_path, layers_markdown(layers, title))
    return json_path, md_path


def write_diff_report(diff: EngineDiff, out_stem: Path) -> tuple[Path, Path]:
    """Write `<out_stem>.json` and `<out_stem>.md`; returns both paths."""
    out_stem = Path(out_stem)
    json_path, md_path = out_stem.with_suffix(".json"), out_stem.with_suffix(".md")
    write_atomic(json_path, json.dumps(diff.to_dict(), indent=2))
    write_atomic(md_path, diff_markdown(diff))
    return json_path, md_path
