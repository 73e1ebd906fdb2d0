"""The stages, one module each; importing this package registers them all (canonical order)."""

from rtq.pipeline.stages import (  # noqa: F401
    build,
    compare,
    evaluate,
    export,
    fidelity,
    localize,
    quantize,
    quantize_onnx,
    sensitivity,
    surgery,
)
