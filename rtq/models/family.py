"""Detector families: what rtq knows about one kind of model, behind one interface.

The pipeline, fidelity, sensitivity, the benchmark and the command lines take a `Detector` and
ask its family; none of them tests a model name with an `if`. A family is registered here by
name and module path and imported only when asked for (like Polygraphy's lazy loaders), so a
new kind of model (another torch implementation, another ONNX export format) is one new module
under `rtq/models/families/` and one line in `FAMILIES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from rtq.errors import UserError
from rtq.models.io import DetectorIO

# family name -> "module:Class"; imported on first use.
FAMILIES: dict[str, str] = {
    "rtdetr": "rtq.models.families.rtdetr:RTDETRFamily",
    "onnx": "rtq.models.families.onnx_adapter:OnnxAdapterFamily",
    "rfdetr": "rtq.models.families.rfdetr:RfDetrFamily",
}

Source = Literal["torch", "onnx"]


@dataclass(frozen=True)
class Detector:
    """The model under test as loaded: never modified by the stages (they copy what they change)."""

    name: str
    family: DetectorFamily
    io: DetectorIO
    torch_model: Any = None  # FP32 deploy-form nn.Module (torch families)
    source_onnx: Path | None = None  # the detector's own ONNX file (ONNX families)
    weights: str = "random"  # where the weights came from: 'random' or a file name
    settings: Mapping[str, Any] = field(default_factory=dict)  # the `model:` config section

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"


class DetectorFamily:
    """One kind of detector. Subclasses override what their kind has; the rest says it has not."""

    name: ClassVar[str]
    source: ClassVar[Source]  # what a detector of this family starts as: a torch model or an ONNX file

    def load(self, model_cfg: Mapping[str, Any]) -> Detector:
        """Build or read the detector that the `model:` config section describes."""
        raise NotImplementedError

    def export(self, detector: Detector, model: Any, out: Path, opset: int, simplify: bool) -> Path:
        """Write the deploy ONNX of `model` (the detector's torch model, or a fake-quant copy) with
        a symbolic batch; an ONNX family writes its source file with the batch made symbolic."""
        raise NotImplementedError

    def raw_outputs(self, model: Any) -> Any:
        """A torch module `images -> raw network outputs` sharing `model`'s weights, for fidelity
        on outputs before top-k; None when the family has no such form."""
        return None

    def quant_groups(self, detector: Detector) -> dict[str, Any]:
        """Named groups that sensitivity analysis keeps in float one at a time (module globs for
        torch families, ONNX node-name lists for ONNX families)."""
        raise UserError(f"model family {self.name!r} defines no quantization groups for sensitivity")

    def graph_feeds(self, graph: Any, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds for an exported graph of this family from RGB images (the family's preprocessing
        at the graph's own input size), so debugging tools can run any of its graphs."""
        raise NotImplementedError


def get_family(name: str) -> DetectorFamily:
    """The family registered as `name`, or a one-line error listing the known ones."""
    try:
        module_name, class_name = FAMILIES[name].split(":")
    except KeyError:
        raise UserError(f"model.family={name!r} is not known; use one of: {', '.join(FAMILIES)}") from None
    family: DetectorFamily = getattr(importlib.import_module(module_name), class_name)()
    return family


def load_detector(model_cfg: Mapping[str, Any]) -> Detector:
    """The detector of a `model:` config section (its `family` key picks the family)."""
    return get_family(str(model_cfg.get("family", "rtdetr"))).load(model_cfg)


def family_source(model_cfg: Mapping[str, Any]) -> Source:
    """What the configured detector starts as, known before anything is loaded (for chain checks)."""
    return get_family(str(model_cfg.get("family", "rtdetr"))).source
