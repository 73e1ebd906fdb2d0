"""The ONNX files the benchmark times, each built once and then taken from the artifact cache.

One function per artifact: the FP32 export, modelopt's TensorRT-oriented INT8 Q/DQ export
(exactly as the pipeline makes it) and one ORT-oriented INT8 file per configured `OrtVariant`.
`build_artifacts` is the whole interface: settings, torch deploy model and detector IO in,
`{backend name: onnx path}` and where each came from out.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtq.cache import ArtifactCache, cache_key, code_digest, file_digest
from rtq.evaluate.bench_settings import MODELOPT_INT8, REFERENCE, BenchSettings
from rtq.models.io import DetectorIO
from rtq.quant.ort_static import OrtVariant, ort_quantize_static


@dataclass
class BenchArtifacts:
    """ONNX path per backend name, and per cache kind whether it was built or found."""

    paths: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class _Context:
    settings: BenchSettings
    torch_model: Any
    io: DetectorIO
    cache: ArtifactCache
    base_key: dict[str, Any]
    sources: dict[str, str]

    def cached(self, kind: str, key: str, filename: str, build: Callable[[Path], None]) -> Path:
        """The cached file of `kind`/`key`, built into a temporary folder first when missing."""
        found = self.cache.lookup(kind, key, filename)
        if found is not None:
            self.sources[kind] = f"cache {kind}/{key}"
            return found
        with tempfile.TemporaryDirectory(prefix="rtq-bench-") as tmp:
            path = Path(tmp) / filename
            start = time.perf_counter()
            build(path)
            self.sources[kind] = f"built in {time.perf_counter() - start:.0f} s, cached as {kind}/{key}"
            return self.cache.store(kind, key, path)

    def calib_key(self) -> dict[str, Any]:
        return dict(source=str(self.settings.calib_source), images=self.settings.calib_images)


def build_artifacts(settings: BenchSettings, torch_model: Any, io: DetectorIO) -> BenchArtifacts:
    """FP32, modelopt INT8 and every ORT variant of `torch_model`, built or taken from the cache."""
    checkpoint = settings.checkpoint
    ctx = _Context(
        settings=settings,
        torch_model=torch_model,
        io=io,
        cache=ArtifactCache(settings.cache_dir),
        base_key=dict(
            model=settings.model,
            checkpoint=file_digest(checkpoint) if checkpoint is not None else None,
            opset=settings.opset,
            code=code_digest(),
        ),
        sources={},
    )
    fp32 = fp32_onnx(ctx)
    paths = {REFERENCE: fp32, MODELOPT_INT8: modelopt_int8_onnx(ctx)}
    for name, variant in settings.ort_variants.items():
        paths[name] = ort_int8_onnx(ctx, fp32, name, variant)
    return BenchArtifacts(paths=paths, sources=ctx.sources)


def fp32_onnx(ctx: _Context) -> Path:
    """The FP32 export every other artifact is compared with."""
    from rtq.export.onnx_export import export_onnx

    def build(path: Path) -> None:
        export_onnx(ctx.torch_model, path, opset=ctx.settings.opset)

    return ctx.cached("bench_fp32", cache_key(**ctx.base_key, kind="fp32"), "model.onnx", build)


def modelopt_int8_onnx(ctx: _Context) -> Path:
    """The TensorRT-oriented Q/DQ export, exactly as the pipeline makes it."""
    from rtq.export.onnx_export import export_onnx
    from rtq.quant.calibrate import calibration_feeds, quantize_model
    from rtq.quant.recipes import load_recipe

    recipe = load_recipe(ctx.settings.recipe)
    calib = dataclasses.replace(
        recipe.calib,
        max_images=ctx.settings.calib_images,
        batch_size=min(recipe.calib.batch_size, ctx.settings.calib_images),
    )
    recipe = dataclasses.replace(recipe, calib=calib)
    key = cache_key(**ctx.base_key, kind="modelopt", recipe=dataclasses.asdict(recipe), **ctx.calib_key())

    def build(path: Path) -> None:
        model = copy.deepcopy(ctx.torch_model)
        feeds = calibration_feeds(recipe, ctx.io, source=ctx.settings.calib_source)
        quantize_model(model, recipe, feeds, progress=False)
        export_onnx(model, path, opset=ctx.settings.opset)

    return ctx.cached("bench_int8_modelopt", key, "model.int8.onnx", build)


def ort_int8_onnx(ctx: _Context, fp32_path: Path, name: str, variant: OrtVariant) -> Path:
    """ORT-oriented variant: `quantize_static` QDQ, uint8 activations, int8 per-channel weights."""
    from rtq.data.calib import CalibrationImages

    key = cache_key(
        **ctx.base_key,
        kind="ort_qdq",
        fp32=file_digest(fp32_path),
        op_types=list(variant.op_types),
        float_scopes=list(variant.float_scopes),
        **ctx.calib_key(),
    )

    def build(path: Path) -> None:
        images = CalibrationImages(ctx.settings.calib_source, max_images=ctx.settings.calib_images)
        feeds = [ctx.io.preprocess([image])[0] for image in images]
        ort_quantize_static(
            fp32_path, path, feeds, op_types=variant.op_types, float_scopes=variant.float_scopes
        )

    return ctx.cached(f"bench_{name}", key, "model.int8_ort.onnx", build)
