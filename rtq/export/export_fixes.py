"""Export fixes: rewrites that let the TorchScript ONNX exporter convert ops it has no symbolic for.

Each fix names the aten ops it removes from the trace and is one of two kinds:
- `fold`: the op computes a constant once the input size is fixed (DINOv2 position embeddings
  resized to the patch grid), so it is computed once in torch and the module returns the result;
  exact by construction, but the graph then serves that input size only.
- `decompose`: the op depends on the input, so it is rewritten into supported ops while tracing
  (antialiased bilinear/bicubic resize as two matrix products with per-axis weight matrices); the
  error of the rewrite is measured against torch (`decomposition_error`).

`applied_fixes(model, image_hw, names)` applies fixes for the duration of an export and restores
the model afterwards, so the detector's own torch model is left as loaded.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtq.errors import UserError

BICUBIC_AA = "aten::_upsample_bicubic2d_aa"
BILINEAR_AA = "aten::_upsample_bilinear2d_aa"


@dataclass
class FixReport:
    """What the applied fixes changed: fix name -> the modules or calls it rewrote."""

    changed: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{name}: {', '.join(items) or 'nothing to change'}" for name, items in self.changed.items()]


Apply = Callable[[nn.Module, tuple[int, int], contextlib.ExitStack], list[str]]


@dataclass(frozen=True)
class ExportFix:
    """One rewrite: the ops it removes, its kind, and how it is applied inside an ExitStack."""

    name: str
    ops: tuple[str, ...]
    kind: Literal["fold", "decompose"]
    summary: str
    apply: Apply


# ---- fold: position embeddings of a fixed input size ----------------------------------------------


class FoldedPositionEmbeddings(nn.Module):
    """Returns the position embeddings computed once in torch for one input size (a graph constant)."""

    value: torch.Tensor

    def __init__(self, value: torch.Tensor, image_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())
        self.image_hw = image_hw

    def forward(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if not torch.jit.is_tracing() and (int(height), int(width)) != self.image_hw:
            raise ValueError(
                f"position embeddings were folded for {self.image_hw} but the input is {(height, width)}; "
                "export again at this input size"
            )
        return self.value.to(embeddings.dtype)

    def extra_repr(self) -> str:
        return f"image_hw={self.image_hw}, shape={tuple(self.value.shape)}"


def _fold_position_embeddings(
    model: nn.Module, image_hw: tuple[int, int], stack: contextlib.ExitStack
) -> list[str]:
    """Replace `interpolate_pos_encoding` of every ViT-style embeddings module by its folded value."""
    changed = []
    for name, module in list(model.named_modules()):
        method = getattr(type(module), "interpolate_pos_encoding", None)
        table = getattr(module, "position_embeddings", None)
        patch = getattr(module, "patch_size", None)
        if method is None or not isinstance(table, torch.Tensor) or patch is None:
            continue
        ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
        tokens = (image_hw[0] // ph) * (image_hw[1] // pw) + 1
        with torch.no_grad():
            probe = table.new_zeros(1, tokens, table.shape[-1])
            value = method(module, probe, image_hw[0], image_hw[1])  # what eager torch computes
        folded = FoldedPositionEmbeddings(value, image_hw)
        module.add_module("folded_position_embeddings", folded)
        # an instance attribute shadows the class method; the folded module stays in the state dict
        object.__setattr__(module, "interpolate_pos_encoding", folded.forward)
        stack.callback(_unfold, module)
        changed.append(name or type(module).__name__)
    return changed


def _unfold(module: nn.Module) -> None:
    module.__dict__.pop("interpolate_pos_encoding", None)
    module._modules.pop("folded_position_embeddings", None)


# ---- decompose: antialiased resize as two matrix products -----------------------------------------


_AA_MODES = ("bicubic", "bilinear")
_TORCH_INTERPOLATE = F.interpolate  # the unpatched resize, for the weights while the rewrite is active


def resize_weights(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """Weight matrix [out, in] of one axis of an antialiased resize (half-pixel centres, no corners).

    Read off torch's own kernel: resizing unit impulses gives each input pixel's weight in every
    output pixel. The other axis is 2 wide, as torch's antialiased path treats a 1-wide axis apart.
    """
    if mode not in _AA_MODES:
        raise UserError(
            f"antialiased resize mode {mode!r} has no decomposition; use one of {sorted(_AA_MODES)}"
        )
    impulses = torch.eye(in_size, dtype=torch.float64)[None, :, :, None].expand(1, in_size, in_size, 2)
    out = _TORCH_INTERPOLATE(impulses, size=(out_size, 2), mode=mode, align_corners=False, antialias=True)
    return out[0, :, :, 0].T.numpy()


def resize_as_matmul(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of [..., H, W] to `size` as `Wh @ x @ Ww^T` (MatMul in ONNX)."""
    wh = torch.from_numpy(resize_weights(int(x.shape[-2]), int(size[0]), mode)).to(x.dtype)
    ww = torch.from_numpy(resize_weights(int(x.shape[-1]), int(size[1]), mode)).to(x.dtype)
    return torch.matmul(torch.matmul(wh, x), ww.transpose(0, 1))


def _output_size(x: torch.Tensor, size: Any, scale_factor: Any) -> tuple[int, int]:
    if size is not None:
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    factors = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
    return (math.floor(int(x.shape[-2]) * factors[0]), math.floor(int(x.shape[-1]) * factors[1]))


def _decompose_antialiased_resize(
    model: nn.Module, image_hw: tuple[int, int], stack: contextlib.ExitStack
) -> list[str]:
    """Route antialiased bilinear/bicubic `F.interpolate` calls to `resize_as_matmul` while active."""
    original = F.interpolate
    calls: list[str] = []

    def interpolate(input: torch.Tensor, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                    align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                    antialias: bool = False) -> torch.Tensor:
        if antialias and mode in _AA_MODES and input.dim() == 4 and not align_corners:
            out_hw = _output_size(input, size, scale_factor)
            calls.append(f"{mode} {tuple(int(s) for s in input.shape[-2:])}->{out_hw}")
            return resize_as_matmul(input, out_hw, mode)
        return original(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)

    # F is torch.nn.functional: callers that look `interpolate` up at call time see the rewrite
    stack.enter_context(_patched(F, "interpolate", interpolate))
    return calls  # filled while the export traces


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def decomposition_error(in_hw: tuple[int, int], out_hw: tuple[int, int], mode: str = "bicubic",
                        channels: int = 8, seed: int = 0) -> float:
    """Max |matmul form - torch| of the antialiased resize on random input (float32)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, *in_hw, generator=generator)
    reference = F.interpolate(x, size=out_hw, mode=mode, align_corners=False, antialias=True)
    return float((resize_as_matmul(x, out_hw, mode) - reference).abs().max())


# ---- registry -------------------------------------------------------------------------------------

EXPORT_FIXES: dict[str, ExportFix] = {
    fix.name: fix
    for fix in (
        ExportFix(
            "fold_position_embeddings",
            (BICUBIC_AA,),
            "fold",
            "ViT position embeddings resized to the patch grid: computed once for the input size",
            _fold_position_embeddings,
        ),
        ExportFix(
            "decompose_antialiased_resize",
            (BICUBIC_AA, BILINEAR_AA),
            "decompose",
            "antialiased bilinear/bicubic resize as MatMul with per-axis weight matrices",
            _decompose_antialiased_resize,
        ),
    )
}


def fixes_for_op(op: str) -> list[str]:
    """Names of the fixes that remove `op` (given as 'aten::name' or 'name')."""
    wanted = op.split("::")[-1]
    return [fix.name for fix in EXPORT_FIXES.values() if any(o.split("::")[-1] == wanted for o in fix.ops)]


def known_fixes_line() -> str:
    """Every fix and the ops it handles, for error messages."""
    return "; ".join(f"{fix.name} ({', '.join(fix.ops)})" for fix in EXPORT_FIXES.values())


def check_fix_names(names: Sequence[str]) -> list[str]:
    """The names as a list, or a one-line error naming the unknown one and the known ones."""
    for name in names:
        if name not in EXPORT_FIXES:
            raise UserError(f"export fix {name!r} is not known; use any of: {', '.join(EXPORT_FIXES)}")
    return list(names)


@contextlib.contextmanager
def applied_fixes(model: nn.Module, image_hw: tuple[int, int], names: Sequence[str]) -> Iterator[FixReport]:
    """Apply the named fixes (in order) while the block runs, then restore `model` and `F`."""
    report = FixReport()
    with contextlib.ExitStack() as stack:
        for name in check_fix_names(names):
            report.changed[name] = EXPORT_FIXES[name].apply(model, image_hw, stack)
        yield report
