"""Read TensorRT engine inspector JSON into layers, and diff the fusions of two engines.

The inspector JSON (`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`,
built with `ProfilingVerbosity.DETAILED`) is `{"Layers": [...], "Bindings": [...]}` on TRT 10
(`"I/O Tensors"` on TRT 11). Each layer has `Name`, `LayerType`, `Inputs`/`Outputs` (objects
with `Name`, `Format/Datatype`, `Dimensions`), `TacticName`/`TacticValue` and `Metadata`: the
ONNX nodes the layer came from, each as `[ONNX Layer: <node name>]`, joined by ASCII separator
characters (\\x1f between the nodes of one fusion, \\x1e between sub-groups). Built with lower
verbosity, `Layers` is a list of plain names.

Why a diff: when an INT8 engine goes wrong after a graph change (e.g. `int8_direct` vs
`int8_extra_outputs`), the question is which ONNX nodes TensorRT fused differently. Layers are
matched by the set of ONNX nodes they cover, not by name: TensorRT names change between builds.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtq.files import write_atomic

_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*)\]")
_SEPARATORS = re.compile(r"[\x1e\x1f\n]")

# Checked in order: more specific names first ("BFLOAT16" before "FLOAT", "INT8" before "INT").
_PRECISION_TOKENS: tuple[tuple[str, str], ...] = (
    (r"\b(BFLOAT16|BF16)\b", "bf16"),
    (r"\b(FLOAT8E4M3|FLOAT8E5M2|FP8|E4M3)\b", "fp8"),
    (r"\b(FLOAT4|FP4|NVFP4)\b", "fp4"),
    (r"\bINT64\b", "int64"),
    (r"\bINT32\b", "int32"),
    (r"\bINT8\b", "int8"),
    (r"\bINT4\b", "int4"),
    (r"\bUINT8\b", "uint8"),
    (r"\bBOOL\b", "bool"),
    (r"\b(FP16|HALF)\b", "fp16"),
    (r"\b(FP32|FLOAT)\b", "fp32"),
)


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer: what it runs, in which precision, and which ONNX nodes it covers."""

    name: str
    type: str
    tactic: str
    input_precisions: tuple[str, ...]
    output_precisions: tuple[str, ...]
    onnx_nodes: tuple[str, ...]

    @property
    def group_key(self) -> frozenset[str]:
        """Identity across builds: the ONNX nodes; layers without metadata fall back to the name."""
        return frozenset(self.onnx_nodes) if self.onnx_nodes else frozenset({f"<layer>{self.name}"})


def precision_of(format_datatype: str) -> str:
    """'Row major linear FP32' -> 'fp32', 'Channel major Int8 format ...' -> 'int8'; '' if unknown."""
    text = format_datatype.upper()
    for pattern, precision in _PRECISION_TOKENS:
        if re.search(pattern, text):
            return precision
    return ""


def parse_metadata(metadata: str) -> tuple[str, ...]:
    """ONNX node names in a layer's `Metadata`, in order, without duplicates."""
    nodes: list[str] = []
    for record in _SEPARATORS.split(metadata or ""):
        record = record.strip()
        if not record:
            continue
        match = _ONNX_LAYER.fullmatch(record)
        found = [match.group(1)] if match else re.findall(r"\[ONNX Layer: (.*?)\]", record)
        for node in found:
            if node not in nodes:
                nodes.append(node)
    return tuple(nodes)


def _tensor_precisions(tensors: Any) -> tuple[str, ...]:
    if not isinstance(tensors, list):
        return ()
    formats = (str(t.get("Format/Datatype", t.get("DataType", ""))) for t in tensors if isinstance(t, dict))
    return tuple(precision_of(text) for text in formats)


def parse_layer(entry: Any) -> EngineLayer:
    """One element of `Layers` (an object with DETAILED verbosity, a name string otherwise)."""
    if isinstance(entry, str):
        return EngineLayer(entry, "", "", (), (), ())
    if not isinstance(entry, Mapping):
        raise ValueError(f"engine inspector layer is neither an object nor a name: {entry!r}")
    tactic = entry.get("TacticName") or entry.get("TacticValue") or ""
    return EngineLayer(
        name=str(entry.get("Name", "")),
        type=str(entry.get("LayerType", "")),
        tactic=str(tactic),
        input_precisions=_tensor_precisions(entry.get("Inputs")),
        output_precisions=_tensor_precisions(entry.get("Outputs")),
        onnx_nodes=parse_metadata(str(entry.get("Metadata", ""))),
    )


def parse_engine_information(info: Mapping[str, Any] | str) -> list[EngineLayer]:
    """Layers of an inspector JSON document (dict or JSON text)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers")
    if not isinstance(layers, list):
        raise ValueError("engine inspector JSON has no 'Layers' list")
    return [parse_layer(entry) for entry in layers]


def load_layers(path: Path) -> list[EngineLayer]:
    """Layers from a `<stem>.layers.json` written by the build stage."""
    return parse_engine_information(json.loads(Path(path).read_text()))


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
        return asdict(self)


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
) -> EngineDiff:
    """Which fused groups differ between two engines, and which same groups changed precision."""
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


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def write_layers_report(
    layers: Sequence[EngineLayer], out_stem: Path, title: str = "Engine layers"
) -> tuple[Path, Path]:
    """Write `<out_stem>.json` and `<out_stem>.md`; returns both paths."""
    out_stem = Path(out_stem)
    json_path, md_path = out_stem.with_suffix(".json"), out_stem.with_suffix(".md")
    _write_text(json_path, json.dumps([asdict(layer) for layer in layers], indent=2))
    _write_text(md_path, layers_markdown(layers, title))
    return json_path, md_path


def write_diff_report(diff: EngineDiff, out_stem: Path) -> tuple[Path, Path]:
    """Write `<out_stem>.json` and `<out_stem>.md`; returns both paths."""
    out_stem = Path(out_stem)
    json_path, md_path = out_stem.with_suffix(".json"), out_stem.with_suffix(".md")
    _write_text(json_path, json.dumps(diff.to_dict(), indent=2))
    _write_text(md_path, diff_markdown(diff))
    return json_path, md_path
