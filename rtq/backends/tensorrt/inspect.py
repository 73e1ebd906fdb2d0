"""Read TensorRT engine inspector JSON into layers, and diff the fusions of two engines.

The inspector JSON (`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`,
built with `ProfilingVerbosity.DETAILED`) is `{"Layers": [...], "Bindings": [...]}` on TRT 10
(`"I/O Tensors"` on TRT 11). Each layer has `Name`, `LayerType`, `Inputs`/`Outputs` (objects
with `Name`, `Format/Datatype`, `Dimensions`), `TacticName`/`TacticValue` and `Metadata`: the
ONNX nodes the layer came from, each as `[ONNX Layer: <node name>]`, joined by ASCII separator
characters (\\x1f between the nodes of one fusion, \\x1e between sub-groups). Built with lower
verbosity, `Layers` is a list of plain names.

The layers become `rtq.backends.layers.EngineLayer`s; the fusion diff lives there too, shared with
the OpenVINO inspector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtq.backends.layers import EngineLayer

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


