"""The benchmark's settings: `conf/bench.yaml` holds every default, the command line overrides.

A model with its own benchmark config has it as `conf/bench_<model>.yaml` (`bench_config`), a
whole config of the same keys (`conf/bench_yolox_nano.yaml`: an ONNX-only model, no PyTorch row).

Keeping the defaults in one YAML (not in argparse, not in a dataclass) means the report, the
workflow script and a reader of the config all see the same values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtq.backends.openvino.compile import OpenVinoSettings
from rtq.config import register_resolvers
from rtq.errors import UserError
from rtq.paths import CONF_DIR
from rtq.quant.nncf_ptq import NncfSettings
from rtq.quant.ort_static import OrtVariant, ort_variants

BENCH_CONFIG = CONF_DIR / "bench.yaml"
# Backend names the benchmark times besides the configured ORT variants.
TORCH_FP32 = "torch_fp32"
REFERENCE = "ort_fp32"  # every speed-up and fidelity figure is relative to this backend
MODELOPT_INT8 = "ort_int8_modelopt"
FIXED_BACKENDS = (TORCH_FP32, REFERENCE, MODELOPT_INT8)
# Top-level keys of the figures file next to the backend names; a variant may not take one.
FIGURE_GROUPS = ("settings", "environment", "goal_speedup", "reference")
# What an OpenVINO row compiles: the FP32 ONNX, modelopt's Q/DQ ONNX, that Q/DQ ONNX after the
# configured `surgery` (numerically the same graph), or NNCF's PTQ of the FP32 ONNX; and the ORT
# backend running the ONNX it came from (its fidelity is measured against that one).
OPENVINO_SOURCES = {
    "fp32": REFERENCE,
    "modelopt": MODELOPT_INT8,
    "surgered": MODELOPT_INT8,
    "nncf": REFERENCE,
}
# How backends' outputs are compared: `scores` (RT-DETR's sorted top-K scores and top-1 labels,
# `score_fidelity_report`) or `raw` (relative L2 of every float output, plus the decoded detections
# matched by IoU, `rtq.evaluate.bench_run.raw_fidelity_report`: for raw-head models such as YOLOX).
FIDELITY_KINDS = ("scores", "raw")
MATCH_SCORE, MATCH_IOU = 0.3, 0.5  # `raw` fidelity: decoded detections matched at this score and IoU
COMPILE_KEYS = ("inference_precision", "performance_hint", "num_threads", "num_streams")


@dataclass(frozen=True)
class OpenVinoRow:
    """One OpenVINO row: which model it compiles and how (`settings.num_threads` None: bench threads)."""

    source: str
    settings: OpenVinoSettings
    description: str = ""
    # parallel infer requests a batch is split across (batch-first chunks); 1: one synchronous call.
    # With the THROUGHPUT hint each request runs on its own stream (num_threads / streams threads).
    requests: int = 1
    # source modelopt only: another conf/quant recipe than the bench's (e.g. a recipe tried for speed)
    recipe: str | None = None

    @property
    def source_backend(self) -> str:
        """The ORT backend that runs this row's ONNX source: the fidelity reference of the row (FP32
        for a row of its own recipe: ORT does not time that file)."""
        return REFERENCE if self.recipe else OPENVINO_SOURCES[self.source]


@dataclass(frozen=True)
class BenchSettings:
    """Everything that decides the artifacts and the timing (values from `conf/bench.yaml`)."""

    model: str
    checkpoint: Path | None
    batches: tuple[int, ...]
    iterations: int
    warmup: int
    recipe: str
    calib_images: int
    calib_source: Path
    images: Path
    threads: int
    opset: int
    cache_dir: Path
    out: Path
    goal_speedup: float
    ort_variants: dict[str, OrtVariant] = field(default_factory=dict)
    openvino: dict[str, OpenVinoRow] = field(default_factory=dict)
    nncf: NncfSettings = field(default_factory=NncfSettings)
    profile_rows: tuple[str, ...] = ()  # OpenVINO rows whose per-layer times go beside the report
    profile_top: int = 20
    openvino_goal: float | None = None  # goal of the OpenVINO INT8 rows over ORT FP32 (None: goal_speedup)
    torch_row: bool = True  # time the PyTorch FP32 model (torch families only)
    # pipeline stages that make the Q/DQ ONNX of `recipe` (the ORT INT8 row and OpenVINO source modelopt)
    int8_stages: tuple[str, ...] = ("quantize", "export")
    int8_description: str = "ORT INT8, modelopt Q/DQ (TensorRT export)"
    surgery: str | None = None  # conf/surgery name applied to the Q/DQ ONNX for OpenVINO source `surgered`
    fidelity: str = "scores"  # one of FIDELITY_KINDS
    # COCO AP of every row on `images` (after the timing): speed and accuracy of one file side by side
    coco_ap: bool = False

    def goals(self) -> dict[str, float]:
        """Per backend with its own goal: the OpenVINO INT8 rows (the others use `goal_speedup`)."""
        if self.openvino_goal is None:
            return {}
        return {name: self.openvino_goal for name, row in self.openvino.items() if row.source != "fp32"}

    @property
    def layers_path(self) -> Path:
        """The OpenVINO per-layer time profile written beside the report."""
        return self.out.with_suffix(".openvino_layers.md")

    @property
    def figures_path(self) -> Path:
        """Where the run's measured figures go (JSON beside the report)."""
        return self.out.with_suffix(".json")

    @property
    def analysis_path(self) -> Path:
        """The hand-written analysis the report includes, with its figures filled in."""
        return self.out.with_suffix(".analysis.md")

    def figures(self) -> dict[str, Any]:
        """The settings a reader needs to interpret the figures, as plain JSON values."""
        return {
            "model": self.model,
            "batches": list(self.batches),
            "iterations": self.iterations,
            "warmup": self.warmup,
            "recipe": self.recipe,
            "calib_images": self.calib_images,
            "timing_images": max(self.batches),
            "threads": self.threads,
            "nncf": dataclasses.asdict(self.nncf),
            **({} if self.torch_row else {"torch_row": False}),
            **({} if self.int8_stages == ("quantize", "export") else {"int8_stages": list(self.int8_stages)}),
            **({"surgery": self.surgery} if self.surgery else {}),
            **({} if self.fidelity == "scores" else {"fidelity": self.fidelity}),
        }


def bench_config(model: str | None) -> Path:
    """`conf/bench_<model>.yaml` when the model has its own benchmark config, else `conf/bench.yaml`."""
    own = CONF_DIR / f"bench_{model}.yaml"
    return own if model and own.is_file() else BENCH_CONFIG


def _path(value: Any) -> Path | None:
    if value is None or str(value).lower() in ("none", "null", ""):
        return None
    return Path(str(value))


def load_settings(overrides: Mapping[str, Any] | None = None, config: Path = BENCH_CONFIG) -> BenchSettings:
    """`config` merged with `overrides` (keys as in the YAML; None values are ignored), checked."""
    register_resolvers()
    try:
        cfg = OmegaConf.load(config)
        given = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in (overrides or {}).items()
            if value is not None
        }
        unknown = sorted(set(given) - set(cfg.keys()))  # type: ignore[arg-type]
        if unknown:
            raise UserError(f"unknown bench settings {unknown}: the keys of {config} are the valid ones")
        raw: dict[str, Any] = OmegaConf.to_container(OmegaConf.merge(cfg, given), resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise UserError(f"{config}: {str(err).splitlines()[0]}; fix the YAML or the override") from None
    return _checked(raw)


def _checked(raw: Mapping[str, Any]) -> BenchSettings:
    """Settings from plain values, or a `UserError` naming the flag (and YAML key) to fix."""
    batches = tuple(int(b) for b in raw["batches"] or ())
    if not batches or any(b <= 0 for b in batches):
        raise UserError(f"--batches {list(batches)} (batches) must be positive batch sizes")
    if int(raw["calib_images"]) <= 0:
        raise UserError(f"--calib-images {raw['calib_images']} must be a positive number of images")
    if int(raw["iterations"]) <= 0 or int(raw["warmup"]) < 0:
        raise UserError(
            f"--iterations {raw['iterations']} / --warmup {raw['warmup']}: iterations must be positive "
            "and warmup zero or more"
        )
    threads = raw["threads"] if raw["threads"] is not None else max(os.cpu_count() or 1, 1)
    if int(threads) <= 0:
        raise UserError(f"--threads {threads} must be a positive number of threads")
    variants = ort_variants(raw.get("ort_variants") or {})
    taken = sorted(set(variants) & {*FIXED_BACKENDS, *FIGURE_GROUPS})
    if taken:
        raise UserError(f"ort_variants {taken}: these names are taken by the benchmark; rename the variants")
    openvino = raw.get("openvino") or {}
    rows = openvino_rows(openvino, int(threads))
    taken = sorted(set(rows) & {*FIXED_BACKENDS, *FIGURE_GROUPS, *variants})
    if taken:
        raise UserError(f"openvino.rows {taken}: these names are taken by other backends; rename the rows")
    profile_rows = tuple(str(name) for name in openvino.get("profile_rows") or ())
    unknown = sorted(set(profile_rows) - set(rows))
    if unknown:
        raise UserError(f"openvino.profile_rows {unknown} are not OpenVINO rows; use names of openvino.rows")
    fidelity = str(raw.get("fidelity") or "scores")
    if fidelity not in FIDELITY_KINDS:
        raise UserError(f"fidelity: {fidelity!r} is unknown; use one of {', '.join(FIDELITY_KINDS)}")
    surgery = raw.get("surgery") or None
    if surgery is None and any(row.source == "surgered" for row in rows.values()):
        raise UserError("openvino rows of source surgered need `surgery` (a conf/surgery name) in the config")
    if surgery is not None and not (CONF_DIR / "surgery" / f"{surgery}.yaml").is_file():
        raise UserError(f"surgery: {surgery!r}: no conf/surgery/{surgery}.yaml")
    torch_row = bool(raw.get("torch", True))
    model = str(raw["model"])
    if not (CONF_DIR / "model" / f"{model}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
        raise UserError(f"unknown model name {model!r} (--model): not in conf/model; use one of {known}")
    if torch_row:
        from rtq.models.registry import get_variant

        get_variant(str(raw["model"]))
    return BenchSettings(
        model=str(raw["model"]),
        checkpoint=_path(raw["checkpoint"]),
        batches=batches,
        iterations=int(raw["iterations"]),
        warmup=int(raw["warmup"]),
        recipe=str(raw["recipe"]),
        calib_images=int(raw["calib_images"]),
        calib_source=Path(str(raw["calib_source"])),
        images=Path(str(raw["images"])),
        threads=int(threads),
        opset=int(raw["opset"]),
        cache_dir=Path(str(raw["cache_dir"])),
        out=Path(str(raw["out"])),
        goal_speedup=float(raw["goal_speedup"]),
        ort_variants=variants,
        openvino=rows,
        nncf=NncfSettings.from_mapping(openvino.get("nncf")),
        profile_rows=profile_rows,
        profile_top=int(openvino.get("profile_top") or 20),
        openvino_goal=None if openvino.get("goal_speedup") is None else float(openvino["goal_speedup"]),
        torch_row=torch_row,
        int8_stages=tuple(str(s) for s in raw.get("int8_stages") or ("quantize", "export")),
        int8_description=str(raw.get("int8_description") or BenchSettings.int8_description),
        surgery=None if surgery is None else str(surgery),
        fidelity=fidelity,
        coco_ap=bool(raw.get("coco_ap", False)),
    )


def openvino_rows(section: Mapping[str, Any], threads: int) -> dict[str, OpenVinoRow]:
    """`openvino.rows` of the config: each row's source, and `openvino.compile` with its overrides."""
    base = dict(section.get("compile") or {})
    rows = {}
    for name, entry in (section.get("rows") or {}).items():
        entry = dict(entry or {})
        unknown = sorted(set(entry) - {"source", "description", "requests", "recipe", *COMPILE_KEYS})
        if unknown or entry.get("source") not in OPENVINO_SOURCES:
            raise UserError(
                f"openvino row '{name}': needs source one of {sorted(OPENVINO_SOURCES)} (got "
                f"{entry.get('source')!r}) and only the keys description, requests, {', '.join(COMPILE_KEYS)}"
                + (f"; unknown {unknown}" if unknown else "")
            )
        compile_settings = {**base, **{k: entry[k] for k in COMPILE_KEYS if k in entry}}
        if compile_settings.get("num_threads") is None:
            compile_settings["num_threads"] = threads
        requests = int(entry.get("requests") or 1)
        if requests < 1:
            raise UserError(f"openvino row '{name}': requests={requests} must be at least 1")
        recipe = entry.get("recipe")
        if recipe is not None and (
            entry["source"] != "modelopt" or not (CONF_DIR / "quant" / f"{recipe}.yaml").is_file()
        ):
            raise UserError(
                f"openvino row '{name}': recipe={recipe!r} needs source modelopt and conf/quant/{recipe}.yaml"
            )
        rows[str(name)] = OpenVinoRow(
            source=str(entry["source"]),
            settings=OpenVinoSettings.from_mapping(compile_settings),
            description=str(entry.get("description") or name),
            requests=requests,
            recipe=None if recipe is None else str(recipe),
        )
    return rows
