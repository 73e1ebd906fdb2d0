"""Quantization recipes: YAML data under `conf/quant/` translated to a modelopt `quant_cfg`.

A recipe is data, so adding or changing one never touches Python. The YAML names an optional
modelopt preset to start from (`base: INT8_DEFAULT_CFG`: per-channel weights on axis 0, per-tensor
inputs, max calibration), then an ordered list of quantizer rules and exclusions that are appended
to the preset's entries (later entries win, as in modelopt), and the calibration settings.

`split_attention: true` swaps every `nn.MultiheadAttention` of the model for
`rtq.models.attention.LinearMultiheadAttention` (weights copied) before quantizers go in, so its
q/k/v/out projections are quantized like other Linears (`*self_attn.q_proj` etc. in globs); the FP32
model and its checkpoint layout stay as they are.

A rule's `modules` glob is matched against module names (`backbone.*`,
`*cross_attn.sampling_offsets`) and applies to the matched modules and everything below them;
`quantizer` picks `input`, `weight`, `output` or `*` quantizers. Globs are checked against the
real model before calibration so a typo fails loudly instead of silently quantizing nothing.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from rtq.errors import UserError

RECIPE_DIR = Path(__file__).resolve().parents[2] / "conf" / "quant"

# How each calibration method is carried out. `algorithm` goes to `mtq.quantize`; `histogram` is
# the `compute_amax` method applied to quantizers whose calibrator is `histogram`. modelopt 0.47's
# `mtq.quantize` cannot finish histogram calibrators itself (its max algorithm calls
# `compute_amax()` without a method and fails), so histogram methods insert quantizers with
# `algorithm=None` and collect/load the statistics in `rtq.quant.calibrate`.
CALIBRATION_METHODS: dict[str, dict[str, Any]] = {
    "max": {"algorithm": "max", "histogram": None},
    "mse": {"algorithm": {"method": "mse"}, "histogram": None},
    "percentile": {"algorithm": None, "histogram": "percentile"},
    "entropy": {"algorithm": None, "histogram": "entropy"},
}
QUANTIZER_KINDS = ("input", "weight", "output", "*")
CALIBRATORS = ("max", "histogram")
ATTRIBUTE_KEYS = ("num_bits", "axis", "calibrator")
RULE_KEYS = {"modules", "quantizer", "parent_class", "enable", *ATTRIBUTE_KEYS}
RECIPE_KEYS = {"name", "description", "base", "quantizers", "exclude", "calib", "split_attention"}
CALIBRATION_KEYS = {"method", "percentile", "max_images", "batch_size", "source"}


@dataclass(frozen=True)
class QuantizerRule:
    """One quantizer entry: which quantizers (module glob, kind, parent class) and what to set."""

    modules: str
    quantizer: str = "*"
    parent_class: str | None = None
    enable: bool | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def quantizer_name(self) -> str:
        """modelopt wildcard over quantizer names: the module glob, its subtree, the quantizer kind."""
        return f"{self.modules}.*{self.quantizer}_quantizer"

    def to_entry(self) -> dict[str, Any]:
        """The modelopt `QuantizerCfgEntry` dict for this rule."""
        entry: dict[str, Any] = {"quantizer_name": self.quantizer_name}
        if self.parent_class is not None:
            entry["parent_class"] = self.parent_class
        if self.attributes:
            entry["cfg"] = dict(self.attributes)
        if self.enable is not None:
            entry["enable"] = self.enable
        return entry


@dataclass(frozen=True)
class CalibrationSettings:
    """How amax is found and on how much data."""

    method: str = "max"
    percentile: float = 99.99
    max_images: int = 128
    batch_size: int = 8
    source: str | None = None  # folder or glob of calibration images; the pipeline config sets it


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe; `to_quant_cfg` turns it into what `mtq.quantize` takes."""

    name: str
    base: str | None
    rules: tuple[QuantizerRule, ...]
    exclude: tuple[str, ...]
    calib: CalibrationSettings
    description: str = ""
    split_attention: bool = False  # swap nn.MultiheadAttention for Linear projections before quantizing

    @property
    def histogram_method(self) -> str | None:
        """`compute_amax` method for histogram calibrators, None when the method needs none."""
        method: str | None = CALIBRATION_METHODS[self.calib.method]["histogram"]
        return method

    def module_globs(self) -> list[tuple[str, str | None]]:
        """(glob, parent_class) pairs the model must match, rules then exclusions."""
        return [(r.modules, r.parent_class) for r in self.rules] + [(g, None) for g in self.exclude]


def _base_entries(base: str | None) -> list[dict[str, Any]]:
    if base is None:
        return [{"quantizer_name": "*", "enable": False}]
    import modelopt.torch.quantization as mtq

    preset = getattr(mtq, base, None)
    if not isinstance(preset, dict) or "quant_cfg" not in preset:
        raise UserError(
            f"recipe base {base!r} is not a modelopt quantization preset; use a name such as "
            "INT8_DEFAULT_CFG from modelopt.torch.quantization, or omit `base`"
        )
    return copy.deepcopy(list(preset["quant_cfg"]))


def to_quant_cfg(recipe: Recipe) -> dict[str, Any]:
    """The modelopt config: preset entries, then rules, then exclusions; algorithm from the method."""
    entries = _base_entries(recipe.base)
    entries += [rule.to_entry() for rule in recipe.rules]
    entries += [{"quantizer_name": f"{glob}.*_quantizer", "enable": False} for glob in recipe.exclude]
    algorithm = copy.deepcopy(CALIBRATION_METHODS[recipe.calib.method]["algorithm"])
    return {"quant_cfg": entries, "algorithm": algorithm}


def _parse_rule(raw: Any, where: str) -> QuantizerRule:
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} must be a mapping with at least `modules`, got {raw!r}")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise UserError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(RULE_KEYS)}")
    if "modules" not in raw or not isinstance(raw["modules"], str) or not raw["modules"]:
        raise UserError(f"{where} needs `modules`: a glob on module names such as 'backbone.*'")
    quantizer = str(raw.get("quantizer", "*"))
    if quantizer not in QUANTIZER_KINDS:
        raise UserError(f"{where} quantizer={quantizer!r} is unknown; use one of {list(QUANTIZER_KINDS)}")
    calibrator = raw.get("calibrator")
    if calibrator is not None and calibrator not in CALIBRATORS:
        raise UserError(f"{where} calibrator={calibrator!r} is unknown; use one of {list(CALIBRATORS)}")
    if calibrator == "histogram" and raw.get("axis") is not None:
        raise UserError(
            f"{where} sets calibrator=histogram with axis={raw['axis']!r}; modelopt's histogram "
            "calibrator is per-tensor only: set axis: null or use calibrator: max"
        )
    axis = raw.get("axis")
    if isinstance(axis, list):
        axis = tuple(axis)
    attributes = {key: raw[key] for key in ATTRIBUTE_KEYS if key in raw}
    if "axis" in attributes:
        attributes["axis"] = axis
    enable = raw.get("enable")
    if enable is not None and not isinstance(enable, bool):
        raise UserError(f"{where} enable={enable!r} must be true or false")
    parent_class = raw.get("parent_class")
    if parent_class is not None:
        resolve_parent_class(str(parent_class))
    return QuantizerRule(
        modules=raw["modules"],
        quantizer=quantizer,
        parent_class=None if parent_class is None else str(parent_class),
        enable=enable,
        attributes=attributes,
    )


def _parse_calibration(raw: Any, name: str) -> CalibrationSettings:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise UserError(f"recipe {name!r}: `calib` must be a mapping, got {raw!r}")
    unknown = set(raw) - CALIBRATION_KEYS
    if unknown:
        raise UserError(
            f"recipe {name!r}: calib has unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(CALIBRATION_KEYS)}"
        )
    settings = CalibrationSettings(**{key: raw[key] for key in CALIBRATION_KEYS if key in raw})
    if settings.method not in CALIBRATION_METHODS:
        raise UserError(
            f"recipe {name!r}: calibration method {settings.method!r} is unknown; use one of "
            f"{sorted(CALIBRATION_METHODS)}"
        )
    if not 0.0 < float(settings.percentile) <= 100.0:
        raise UserError(f"recipe {name!r}: percentile={settings.percentile} must be in (0, 100]")
    for key in ("max_images", "batch_size"):
        value = getattr(settings, key)
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"recipe {name!r}: calib.{key}={value!r} must be a positive integer")
    return settings


def recipe_from_dict(raw: Mapping[str, Any], name: str | None = None) -> Recipe:
    """Parse a recipe mapping (a loaded YAML file or a Hydra `quant` node turned into a dict)."""
    recipe_name = str(raw.get("name", name or "recipe"))
    unknown = set(raw) - RECIPE_KEYS
    if unknown:
        raise UserError(
            f"recipe {recipe_name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(RECIPE_KEYS)}"
        )
    rules = tuple(
        _parse_rule(item, f"recipe {recipe_name!r} quantizers[{i}]")
        for i, item in enumerate(raw.get("quantizers") or [])
    )
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(g, str) and g for g in exclude):
        raise UserError(f"recipe {recipe_name!r}: `exclude` must be a list of module globs, got {exclude!r}")
    calib = _parse_calibration(raw.get("calib"), recipe_name)
    split = raw.get("split_attention", False)
    if not isinstance(split, bool):
        raise UserError(f"recipe {recipe_name!r}: split_attention={split!r} must be true or false")
    recipe = Recipe(
        name=recipe_name,
        base=raw.get("base"),
        rules=rules,
        exclude=tuple(exclude),
        calib=calib,
        description=str(raw.get("description", "")),
        split_attention=split,
    )
    _check_calibrators(recipe)
    return recipe


def _check_calibrators(recipe: Recipe) -> None:
    """Histogram calibrators and histogram methods only make sense together."""
    uses_histogram = any(r.attributes.get("calibrator") == "histogram" for r in recipe.rules)
    if uses_histogram and recipe.histogram_method is None:
        raise UserError(
            f"recipe {recipe.name!r} uses calibrator: histogram with calibration method "
            f"{recipe.calib.method!r}; use method percentile or entropy"
        )
    if not uses_histogram and recipe.histogram_method is not None:
        raise UserError(
            f"recipe {recipe.name!r}: calibration method {recipe.calib.method!r} needs at least "
            "one quantizer rule with calibrator: histogram"
        )


def available_recipes() -> list[str]:
    """Names of the recipes shipped in conf/quant."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by shipped name (`int8_default`) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(
            f"quantization recipe {str(name_or_path)!r} not found; use one of {available_recipes()} "
            "or a path to a recipe YAML"
        )
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, Mapping):
        raise UserError(f"recipe file {path} must hold a mapping, got {type(raw).__name__}")
    return recipe_from_dict(raw, name=path.stem)


def resolve_parent_class(name: str) -> type[nn.Module]:
    """`nn.Conv2d` -> torch.nn.Conv2d, checked against the classes modelopt can quantize."""
    from modelopt.torch.quantization import QuantModuleRegistry

    cls = getattr(nn, name.removeprefix("nn."), None) if name.startswith("nn.") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name not in QuantModuleRegistry:
        raise UserError(
            f"parent_class {name!r} is not a module class modelopt quantizes; use e.g. nn.Conv2d, "
            "nn.Linear, nn.ConvTranspose2d"
        )
    return cls


def _glob_hits(glob: str, parent: type[nn.Module] | None, modules: Mapping[str, nn.Module]) -> bool:
    for name, module in modules.items():
        matched = fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(name, f"{glob}.*")
        if matched and (parent is None or isinstance(module, parent)):
            return True
    return False


def prepare_model(model: nn.Module, recipe: Recipe) -> nn.Module:
    """`model` in the form the recipe quantizes, changed in place: attention split if it asks for it."""
    if recipe.split_attention:
        from rtq.models.attention import split_attention

        split_attention(model)
    return model


def check_module_globs(recipe: Recipe, model: nn.Module) -> None:
    """Every rule and exclusion glob must match a module of the model (of its parent_class if set).

    `model` may be the FP32 model: with `split_attention` the globs are checked on its split form.
    """
    if recipe.split_attention and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        model = prepare_model(copy.deepcopy(model), recipe)
    modules = {name: module for name, module in model.named_modules() if name}
    for glob, parent_name in recipe.module_globs():
        parent = resolve_parent_class(parent_name) if parent_name else None
        if _glob_hits(glob, parent, modules):
            continue
        examples = [n for n, m in modules.items() if parent is None or isinstance(m, parent)][:5]
        kind = f" of class {parent_name}" if parent_name else ""
        raise UserError(
            f"recipe {recipe.name!r}: module glob {glob!r} matches no module{kind} of the model; "
            f"module names look like {examples}"
        )
