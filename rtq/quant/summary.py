"""What a recipe actually quantized: enabled quantizers per module type and role.

Recipes are globs, so the only trustworthy account of what they did is a count taken from the
quantized model itself; it goes into `results.json` and is printed as a table.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

ROLES = ("input", "weight", "output")


def _base_type_name(module: nn.Module) -> str:
    """`QuantConv2d` (a modelopt dynamic class) -> `Conv2d`: the first torch.nn class in its MRO."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn.modules"):
            return cls.__name__
    return type(module).__name__


def quantizer_summary(model: nn.Module) -> dict[str, Any]:
    """{"total": enabled count, "by_type": {type: {role: count}}, "disabled": count} (JSON-ready)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    modules = dict(model.named_modules())
    by_type: dict[str, dict[str, int]] = {}
    enabled = disabled = 0
    for name, module in modules.items():
        if not isinstance(module, TensorQuantizer):
            continue
        parent_name, _, leaf = name.rpartition(".")
        role = leaf.removesuffix("_quantizer")
        if not module.is_enabled:
            disabled += 1
            continue
        enabled += 1
        counts = by_type.setdefault(_base_type_name(modules[parent_name]), dict.fromkeys(ROLES, 0))
        counts[role] = counts.get(role, 0) + 1
    return {"total": enabled, "disabled": disabled, "by_type": dict(sorted(by_type.items()))}


def print_summary(summary: dict[str, Any], title: str = "enabled quantizers") -> None:
    """The summary as a rich table: one row per module type, one column per quantizer role."""
    from rich.console import Console
    from rich.table import Table

    roles = sorted({role for counts in summary["by_type"].values() for role in counts},
                   key=lambda r: (ROLES.index(r) if r in ROLES else len(ROLES), r))
    table = Table(title=title)
    table.add_column("module type")
    for role in roles:
        table.add_column(role, justify="right")
    for type_name, counts in summary["by_type"].items():
        table.add_row(type_name, *(str(counts.get(role, 0)) for role in roles))
    table.add_row("total", str(summary["total"]), *([""] * (len(roles) - 1)), style="bold")
    Console().print(table)
