"""Stage descriptors and their registry, in the manner of `rtq.surgery.base.register_pass`.

A stage is a function `(StageContext) -> StageResult` registered with `@register_stage(...)`,
which declares its name, the config section it reads, the artifacts it needs and those it makes,
and its place in the canonical order. The driver (`rtq.pipeline.driver`) reads only these
descriptors to check a chain before running it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtq.cache import ArtifactCache
from rtq.models.family import Detector
from rtq.pipeline.artifacts import Artifacts
from rtq.registry import Registry

log = logging.getLogger("rtq")

# needs: each entry is one artifact name, or alternatives "a|b" (any one of them will do).
Needs = tuple[str, ...]
MakesFn = Callable[[DictConfig, frozenset[str]], frozenset[str]]


@dataclass
class StageContext:
    """What a stage sees: the config, the run directory, the detector, the cache and the artifacts."""

    cfg: DictConfig
    run_dir: Path
    detector: Detector
    cache: ArtifactCache
    artifacts: Artifacts

    def section(self, name: str) -> dict[str, Any]:
        """A config section as a plain dict (resolved), empty when absent."""
        node = self.cfg.get(name)
        if node is None:
            return {}
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


@dataclass
class StageResult:
    """What a stage did: files it wrote, the result fields it owns, and whether it reused the cache."""

    outputs: list[Path] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)  # keys must be among the stage's `records`
    cached: str = ""  # non-empty: the artifact came from the cache (what was reused)


StageFn = Callable[[StageContext], StageResult]


@dataclass(frozen=True)
class StageSpec:
    """The descriptor of one stage."""

    name: str
    run: StageFn
    order: int  # canonical position: a chain must list its stages in increasing order
    section: str | None  # the config section the stage reads
    needs: Needs | Callable[[DictConfig], Needs]
    makes: frozenset[str] | MakesFn
    records: tuple[str, ...] = ()  # result fields (in results.json) this stage owns

    def needs_for(self, cfg: DictConfig) -> Needs:
        return self.needs(cfg) if callable(self.needs) else self.needs

    def makes_for(self, cfg: DictConfig, available: frozenset[str]) -> frozenset[str]:
        return self.makes(cfg, available) if callable(self.makes) else self.makes


STAGES: Registry[StageSpec] = Registry("stage")


def register_stage(
    name: str,
    *,
    order: int,
    section: str | None,
    needs: Needs | Callable[[DictConfig], Needs],
    makes: frozenset[str] | MakesFn | tuple[str, ...] = (),
    records: tuple[str, ...] = (),
) -> Callable[[StageFn], StageFn]:
    """Register `fn` as stage `name` (see `StageSpec`)."""

    def decorate(fn: StageFn) -> StageFn:
        made = frozenset(makes) if isinstance(makes, tuple | frozenset) else makes
        STAGES.add(name, StageSpec(name, fn, order, section, needs, made, records))
        return fn

    return decorate


def quant_enabled(cfg: DictConfig) -> bool:
    """Whether the config names a quantization recipe (`quant=none` is the FP32 path)."""
    return str(cfg.quant.get("name", "none")) != "none"


def made_if_quantized(artifact: str) -> MakesFn:
    """`makes` of a quantization stage: `artifact` when a recipe is configured, else nothing."""
    return lambda cfg, available: frozenset({artifact}) if quant_enabled(cfg) else frozenset()


def canonical_order() -> list[StageSpec]:
    """Every registered stage, in the order a chain must list them."""
    return sorted(STAGES.values(), key=lambda spec: spec.order)
