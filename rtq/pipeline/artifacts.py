"""What stages hand each other: typed artifacts, not a grab-bag.

Each field is one kind of artifact; a stage declares which ones it needs and makes (see
`rtq.pipeline.stage`), and the driver checks the whole chain against these names before
anything runs. Paths point into the run directory; the two torch models live in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ARTIFACT_DOCS: dict[str, str] = {
    "torch_model": "the FP32 torch deploy model (torch families)",
    "source_onnx": "the detector's own ONNX file (ONNX families)",
    "quantized_model": "a fake-quant copy of the torch model (stage quantize)",
    "onnx": "the FP32 ONNX with symbolic batch (stage export without quantize)",
    "qdq_onnx": "the INT8 Q/DQ ONNX (stage export after quantize, or stage quantize_onnx)",
    "surgered_onnx": "the Q/DQ or FP32 ONNX after graph passes (stage surgery)",
    "engine": "a compiled model (stage build)",
}


@dataclass
class Artifacts:
    """The artifacts of one run so far; None means no stage has made it (yet)."""

    torch_model: Any = None
    source_onnx: Path | None = None
    quantized_model: Any = None
    quantized_key: str = ""  # cache key of `quantized_model`: what later keys build on
    onnx: Path | None = None
    qdq_onnx: Path | None = None
    surgered_onnx: Path | None = None
    engine: Path | None = None
    engine_compiler: str = ""  # which compiler made `engine`
    reports: dict[str, Path] = field(default_factory=dict)  # name -> report file (compare, surgery, ...)

    def available(self) -> frozenset[str]:
        """Names of the artifacts present (the names stages declare in needs/makes)."""
        return frozenset(
            f.name for f in fields(self) if f.name in ARTIFACT_DOCS and getattr(self, f.name) is not None
        )

    @property
    def reference_graph(self) -> Path | None:
        """The graph before surgery: what a surgered graph or an engine is compared against."""
        return self.qdq_onnx or self.onnx

    @property
    def graph(self) -> Path | None:
        """The newest graph: surgered, else Q/DQ, else FP32."""
        return self.surgered_onnx or self.reference_graph

    @property
    def deployed_torch_model(self) -> Any:
        """The torch model a torch runner evaluates: the fake-quant copy when there is one."""
        return self.quantized_model if self.quantized_model is not None else self.torch_model

    @property
    def precision(self) -> str:
        """What the ONNX / torch artifacts compute: int8 once anything was quantized, else fp32."""
        return "int8" if self.qdq_onnx is not None or self.quantized_model is not None else "fp32"
