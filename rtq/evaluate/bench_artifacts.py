"""The ONNX files the benchmark times: the pipeline's own FP32 and Q/DQ exports, plus ORT's.

The FP32 export and modelopt's INT8 Q/DQ export come from the experiment pipeline itself
(`rtq.pipeline.driver.run_chain` with stages `[export]` and the config's `int8_stages`:
`[quantize, export]` for RT-DETR's torch-level recipe, `[export, quantize_onnx]` for an ONNX-level
one such as YOLOX's), so the benchmark times exactly what `python -m rtq.run` deploys and shares
its cache; with a `surgery` configured, the same chain plus stage `surgery` gives the surgered
Q/DQ file (OpenVINO source `surgered`). The ORT-oriented INT8 files are ORT's own
`quantize_static` of that FP32 export, one per configured `OrtVariant`; the OpenVINO rows compile
one of those files, or NNCF's PTQ of the FP32 file (`nncf_ir`, OpenVINO IR).
`build_artifacts` is the whole interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtq.cache import ArtifactCache, cache_key, code_digest, file_digest
from rtq.errors import UserError
from rtq.evaluate.bench_settings import MODELOPT_INT8, REFERENCE, BenchSettings
from rtq.models.family import Detector
from rtq.paths import CONF_DIR
from rtq.quant.ort_static import OrtVariant, ort_quantize_static


@dataclass
class BenchArtifacts:
    """ONNX path per ORT backend name, the detector they came from, and where each file came from;
    per OpenVINO row the file it compiles and the ONNX that file came from (its port and node names)."""

    detector: Detector
    paths: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    openvino: dict[str, Path] = field(default_factory=dict)
    openvino_onnx: dict[str, Path] = field(default_factory=dict)


def pipeline_overrides(settings: BenchSettings) -> list[str]:
    """The `python -m rtq.run` overrides that make the pipeline's artifacts with the bench's settings."""
    if not (CONF_DIR / "quant" / f"{settings.recipe}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "quant").glob("*.yaml")))
        raise UserError(
            f"--recipe {settings.recipe}: no conf/quant/{settings.recipe}.yaml; choose one of {known}"
        )
    from omegaconf import OmegaConf

    checkpoint = "null" if settings.checkpoint is None else str(settings.checkpoint)
    model_yaml = CONF_DIR / "model" / f"{settings.model}.yaml"
    takes_checkpoint = not model_yaml.is_file() or "checkpoint" in OmegaConf.load(model_yaml)
    return [
        f"model={settings.model}",
        *([f"model.checkpoint={checkpoint}"] if takes_checkpoint or settings.checkpoint else []),
        f"data.calib.source={settings.calib_source}",
        f"export.opset={settings.opset}",
        f"cache_dir={settings.cache_dir}",
    ]


def recipe_stages(recipe: str) -> tuple[str, ...]:
    """The pipeline stages that make a recipe's Q/DQ ONNX: a torch recipe quantizes the model before
    export, a `level: onnx` one quantizes the exported FP32 ONNX."""
    from omegaconf import DictConfig, OmegaConf

    recipe_cfg = OmegaConf.load(CONF_DIR / "quant" / f"{recipe}.yaml")
    level = recipe_cfg.get("level") if isinstance(recipe_cfg, DictConfig) else None
    return ("export", "quantize_onnx") if level == "onnx" else ("quantize", "export")


def _run_chain(settings: BenchSettings, name: str, overrides: list[str]) -> tuple[Any, str]:
    """Run a pipeline chain into the cache folder; its chain result and a line on where it came from."""
    from rtq.config import compose_config
    from rtq.pipeline.driver import run_chain

    cfg = compose_config([*pipeline_overrides(settings), *overrides])
    started = time.perf_counter()
    chain = run_chain(cfg, settings.cache_dir / "bench_runs" / name)
    states = ", ".join(f"{r.stage} {r.status}" for r in chain.records)
    return chain, f"pipeline ({states}) in {time.perf_counter() - started:.0f} s"


def build_artifacts(settings: BenchSettings) -> BenchArtifacts:
    """FP32 and modelopt INT8 from the pipeline, and every ORT variant, built or taken from the cache."""
    fp32_chain, fp32_source = _run_chain(settings, "fp32", ["quant=none", "stages=[export]"])
    from omegaconf import OmegaConf

    recipe_batch = int(OmegaConf.load(CONF_DIR / "quant" / f"{settings.recipe}.yaml").calib.batch_size)
    calib = [
        f"quant.calib.max_images={settings.calib_images}",
        f"quant.calib.batch_size={min(recipe_batch, settings.calib_images)}",
    ]
    quant = [f"quant={settings.recipe}", *calib]
    int8_chain, int8_source = _run_chain(
        settings, "int8", [*quant, f"stages=[{','.join(settings.int8_stages)}]"]
    )
    fp32, int8 = fp32_chain.artifacts.onnx, int8_chain.artifacts.qdq_onnx
    assert fp32 is not None and int8 is not None
    onnx_of = {"fp32": fp32, "modelopt": int8, "nncf": fp32}
    artifacts = BenchArtifacts(
        detector=fp32_chain.detector,
        paths={REFERENCE: fp32, MODELOPT_INT8: int8},
        sources={REFERENCE: fp32_source, MODELOPT_INT8: int8_source},
    )
    cache = ArtifactCache(settings.cache_dir)
    for name, variant in settings.ort_variants.items():
        artifacts.paths[name] = ort_int8_onnx(
            settings, cache, fp32_chain.detector, fp32, variant, artifacts.sources
        )
    if any(row.source == "surgered" for row in settings.openvino.values()):
        stages = ",".join([*settings.int8_stages, "surgery"])
        chain, made = _run_chain(
            settings, "int8_surgery", [*quant, f"surgery={settings.surgery}", f"stages=[{stages}]"]
        )
        assert chain.artifacts.surgered_onnx is not None
        onnx_of["surgered"] = chain.artifacts.surgered_onnx
        artifacts.sources[f"surgery {settings.surgery}"] = made
    for recipe in sorted({row.recipe for row in settings.openvino.values() if row.recipe}):
        chain, made = _run_chain(
            settings,
            f"int8_{recipe}",
            [f"quant={recipe}", *calib, f"stages=[{','.join(recipe_stages(recipe))}]"],
        )
        assert chain.artifacts.qdq_onnx is not None
        onnx_of[f"recipe:{recipe}"] = chain.artifacts.qdq_onnx
        artifacts.sources[f"recipe {recipe}"] = made
    compiled_of = dict(onnx_of)  # what each source compiles: its ONNX, or NNCF's IR built from it once
    if any(row.source == "nncf" for row in settings.openvino.values()):
        compiled_of["nncf"] = nncf_ir(settings, cache, fp32_chain.detector, fp32, artifacts.sources)
    for name, row in settings.openvino.items():
        source = f"recipe:{row.recipe}" if row.recipe else row.source
        artifacts.openvino_onnx[name], artifacts.openvino[name] = onnx_of[source], compiled_of[source]
    return artifacts


def _fetch(
    cache: ArtifactCache,
    kind: str,
    key: str,
    filename: str,
    build: Any,
    sources: dict[str, str],
    note: str = "",
) -> Path:
    """The cached artifact (built first when missing), its provenance recorded under `kind/key`."""
    started = time.perf_counter()
    path, hit = cache.fetch_or_make(kind, key, filename, build)
    made = "cache" if hit else f"built in {time.perf_counter() - started:.0f} s"
    sources[f"{kind}/{key}"] = f"{made}{note}"
    return path


def _calibrated_from(settings: BenchSettings, fp32_path: Path) -> dict[str, Any]:
    """The cache-key part every PTQ of the FP32 export shares: that file and the calibration images."""
    source, images = str(settings.calib_source), settings.calib_images
    return {"fp32": file_digest(fp32_path), "source": source, "images": images}


def _calibration_feeds(settings: BenchSettings, detector: Detector) -> list[dict[str, Any]]:
    """One feed per calibration image, preprocessed as the detector does, for ORT's and NNCF's PTQ."""
    from rtq.data.calib import CalibrationImages

    images = CalibrationImages(settings.calib_source, max_images=settings.calib_images)
    return [detector.io.preprocess([image])[0] for image in images]


def ort_int8_onnx(
    settings: BenchSettings,
    cache: ArtifactCache,
    detector: Detector,
    fp32_path: Path,
    variant: OrtVariant,
    sources: dict[str, str],
) -> Path:
    """ORT-oriented variant: `quantize_static` QDQ, uint8 activations, int8 per-channel weights."""
    key = cache_key(
        kind="ort_qdq",
        **_calibrated_from(settings, fp32_path),
        op_types=list(variant.op_types),
        float_scopes=list(variant.float_scopes),
        code=code_digest(),
    )

    def build(path: Path) -> None:
        feeds = _calibration_feeds(settings, detector)
        ort_quantize_static(
            fp32_path, path, feeds, op_types=variant.op_types, float_scopes=variant.float_scopes
        )

    return _fetch(cache, "ort_qdq", key, "model.int8_ort.onnx", build, sources)


def nncf_ir(
    settings: BenchSettings,
    cache: ArtifactCache,
    detector: Detector,
    fp32_path: Path,
    sources: dict[str, str],
) -> Path:
    """NNCF PTQ of the FP32 ONNX as OpenVINO IR (`model.xml` + `model.bin`), built or from the cache."""
    import nncf
    import openvino as ov

    from rtq.quant.nncf_ptq import nncf_quantize

    key = cache_key(
        kind="nncf_ptq",
        **_calibrated_from(settings, fp32_path),
        nncf_settings=settings.nncf.record(),
        openvino=str(ov.get_version()),
    )

    def build(path: Path) -> None:
        nncf_quantize(fp32_path, path, _calibration_feeds(settings, detector), settings.nncf)

    return _fetch(cache, "nncf_ptq", key, "model.xml", build, sources, f" (nncf {nncf.__version__})")
