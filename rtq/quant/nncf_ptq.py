"""NNCF's own post-training quantization, the way a CPU user of OpenVINO would run it.

The peer of rtq's modelopt Q/DQ export on OpenVINO: `ov.Core().read_model(fp32.onnx)`, then
`nncf.quantize(ov_model, nncf.Dataset(feeds), preset=..., model_type=...)` on the same calibration
images, saved as OpenVINO IR (`model.xml` + `model.bin`). Which preset and model type are used is
data (`NncfSettings`, read from the benchmark's YAML), not code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtq.errors import UserError

NNCF_PRESETS = ("performance", "mixed")
NNCF_MODEL_TYPES = ("transformer", "none")


@dataclass(frozen=True)
class NncfSettings:
    """`nncf.quantize` arguments: preset (performance: symmetric activations, mixed: asymmetric),
    model type (transformer: NNCF's transformer patterns and SmoothQuant; none: the CNN default)
    and whether bias correction is the fast variant."""

    preset: str = "mixed"
    model_type: str = "transformer"
    fast_bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.preset not in NNCF_PRESETS:
            raise UserError(f"openvino.nncf.preset={self.preset!r}: use one of {', '.join(NNCF_PRESETS)}")
        if self.model_type not in NNCF_MODEL_TYPES:
            raise UserError(
                f"openvino.nncf.model_type={self.model_type!r}: use one of {', '.join(NNCF_MODEL_TYPES)}"
            )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> NncfSettings:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(
                f"openvino.nncf has unknown keys {unknown}: use {', '.join(cls.__dataclass_fields__)}"
            )
        defaults = cls()
        return cls(
            preset=str(raw.get("preset", defaults.preset)),
            model_type=str(raw.get("model_type", defaults.model_type)),
            fast_bias_correction=bool(raw.get("fast_bias_correction", defaults.fast_bias_correction)),
        )

    def record(self) -> dict[str, Any]:
        """What the report says NNCF was asked to do (its version included)."""
        import nncf

        return {**asdict(self), "nncf": str(nncf.__version__)}


def nncf_quantize(
    fp32_onnx: Path, out_xml: Path, feeds: Sequence[Mapping[str, np.ndarray]], settings: NncfSettings
) -> Path:
    """`nncf.quantize` of the FP32 ONNX read by OpenVINO, on `feeds`; writes `out_xml` and its .bin."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    items = [dict(feed) for feed in feeds]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(items),
        preset=nncf.QuantizationPreset(settings.preset),
        model_type=None if settings.model_type == "none" else nncf.ModelType(settings.model_type),
        subset_size=len(items),
        fast_bias_correction=settings.fast_bias_correction,
        target_device=nncf.TargetDevice.CPU,
    )
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml
