"""The driver: check a chain of stages against their descriptors, run it, log it, write the row.

`check_chain` needs only the config: it walks the listed stages in order with the set of artifact
names each one needs and makes (see `rtq.pipeline.stage`), so a chain that cannot work fails in
one line naming the stage and the missing artifact before any model is loaded.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import rtq.pipeline.stages  # noqa: F401 - registers every stage
from rtq.cache import ArtifactCache
from rtq.errors import StageSkipped, UserError
from rtq.files import write_atomic
from rtq.models.family import Detector, Source, family_source, load_detector
from rtq.pipeline.artifacts import ARTIFACT_DOCS, Artifacts
from rtq.pipeline.row import result_row
from rtq.pipeline.stage import STAGES, StageContext, StageResult, StageSpec, canonical_order

log = logging.getLogger("rtq")


@dataclass
class StageRecord:
    """One line of `stages.json`: what a stage read and wrote, and how long it took."""

    stage: str
    status: str  # ok | skipped | cached
    seconds: float
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reason: str = ""


def _initial(source: Source) -> frozenset[str]:
    return frozenset({"torch_model"} if source == "torch" else {"source_onnx"})


def _makers(name: str, cfg: DictConfig) -> list[str]:
    everything = frozenset(ARTIFACT_DOCS)
    fp32 = everything - {"quantized_model"}
    return [
        s.name for s in canonical_order() if name in s.makes_for(cfg, everything) | s.makes_for(cfg, fp32)
    ]


def check_chain(cfg: DictConfig, source: Source | None = None) -> list[StageSpec]:
    """The chain `cfg.stages` as descriptors, or a `UserError` naming the first stage that cannot run."""
    names = [str(n) for n in cfg.stages]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        known = ", ".join(s.name for s in canonical_order())
        raise UserError(f"unknown stage {unknown[0]!r} in `stages`; known stages, in order: {known}")
    if len(set(names)) != len(names):
        raise UserError(f"`stages` lists a stage twice: {names}; list each stage once")
    chain = [STAGES[n] for n in names]
    for before, after in zip(chain, chain[1:], strict=False):
        if after.order < before.order:
            raise UserError(
                f"stage {after.name!r} cannot come after {before.name!r}; the canonical order is "
                + " -> ".join(s.name for s in canonical_order())
            )
    source = source or family_source(cfg.model)
    available = _initial(source)
    for spec in chain:
        for need in spec.needs_for(cfg):
            options = need.split("|")
            if not available.intersection(options):
                wanted = " or ".join(f"{o} ({ARTIFACT_DOCS.get(o, o)})" for o in options)
                makers = sorted({m for o in options for m in _makers(o, cfg)} - {spec.name})
                fix = f"put {' or '.join(makers)} before it in `stages`" if makers else "no stage makes it"
                kind = "a torch" if source == "torch" else "an ONNX"
                earlier = names[: names.index(spec.name)]
                raise UserError(
                    f"stage {spec.name!r} needs {wanted}, which {kind} model with stages {earlier} "
                    f"does not have; {fix}"
                )
        available = available | spec.makes_for(cfg, available)
    return chain


def check_inputs(cfg: DictConfig, chain: list[StageSpec]) -> None:
    """Fail on a bad dataset or calibration path before any expensive stage runs."""
    from rtq.data.calib import find_calibration_images
    from rtq.data.coco import CocoDataset
    from rtq.pipeline.inputs import calibration_source
    from rtq.pipeline.stage import quant_enabled

    names = {spec.name for spec in chain}
    if names & {"evaluate", "compare", "fidelity", "localize"}:
        CocoDataset(str(cfg.data.root), max_images=cfg.data.get("max_images"))
    if names & {"quantize", "quantize_onnx"} and quant_enabled(cfg):
        find_calibration_images(calibration_source(cfg))
    if "quantize" in names and quant_enabled(cfg):
        from omegaconf import OmegaConf

        from rtq.quant.recipes import recipe_from_dict

        quant = OmegaConf.to_container(cfg.quant, resolve=True)
        assert isinstance(quant, dict)
        recipe_from_dict({str(k): v for k, v in quant.items()})  # a bad recipe fails before any model loads


@dataclass
class ChainResult:
    """What a chain left: its artifacts, the detector, the stages' result fields and the stage log."""

    artifacts: Artifacts
    detector: Detector
    fields: dict[str, Any]
    records: list[StageRecord]


def run_chain(cfg: DictConfig, run_dir: Path) -> ChainResult:
    """Check and run the chain `cfg.stages` into `run_dir`, logging each stage to `stages.json`.

    Other tools (the benchmark) call it to get the pipeline's own artifacts.
    """
    chain = check_chain(cfg)
    check_inputs(cfg, chain)
    run_dir.mkdir(parents=True, exist_ok=True)
    detector = load_detector(cfg.model)
    if detector.random_weights:
        log.warning("%s has random weights (no model.checkpoint): AP is not meaningful", detector.name)
    artifacts = Artifacts(torch_model=detector.torch_model, source_onnx=detector.source_onnx)
    ctx = StageContext(cfg, run_dir, detector, ArtifactCache(str(cfg.cache_dir)), artifacts)
    records: list[StageRecord] = []
    fields: dict[str, Any] = {}
    for spec in chain:
        before = str(artifacts.graph) if artifacts.graph else ""
        started = time.perf_counter()
        try:
            result = spec.run(ctx)
            status, reason = ("cached", result.cached) if result.cached else ("ok", "")
        except StageSkipped as why:
            result, status, reason = StageResult(), "skipped", str(why)
            print(f"[rtq] stage {spec.name} skipped: {reason}")
        stray = sorted(set(result.record) - set(spec.records))
        if stray:
            raise RuntimeError(f"stage {spec.name} wrote result fields it does not declare: {stray}")
        fields.update(result.record)
        inputs = ([before] if before else []) + result.inputs
        seconds = round(time.perf_counter() - started, 3)
        outputs = [str(p) for p in result.outputs]
        records.append(StageRecord(spec.name, status, seconds, inputs, outputs, reason))
        write_atomic(run_dir / "stages.json", json.dumps([asdict(r) for r in records], indent=2))
    return ChainResult(artifacts, detector, fields, records)


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the chain and, when it evaluated, write the result row (`results.json` and the store)."""
    chain = run_chain(cfg, run_dir)
    if "evaluation" not in chain.fields:
        return chain.fields
    skipped = [f"{r.stage}: {r.reason}" for r in chain.records if r.status == "skipped"]
    row = result_row(cfg, chain.detector, run_dir, chain.fields, skipped)
    _publish(cfg, run_dir, row)
    return row


def _publish(cfg: DictConfig, run_dir: Path, row: dict[str, Any]) -> None:
    from rtq.results.store import append_to_store, write_results
    from rtq.results.table import markdown_table

    write_results(run_dir, row)
    append_to_store(Path(str(cfg.results.store)), row)
    print(markdown_table([row]))
