"""Insert modelopt quantizers into a torch model and calibrate them on real images.

`mtq.quantize(model, quant_cfg, forward_loop)` does the work for the methods modelopt finishes
itself (`max`, `mse`). For histogram methods (`percentile`, `entropy`) modelopt 0.47's quantize
cannot compute the amax (its max algorithm calls the histogram calibrator without a method), so
quantizers are inserted with `algorithm=None` and the statistics are collected here: enable
calibration, run the same forward loop, then `load_calib_amax(method, percentile=...)` on
histogram calibrators and `load_calib_amax()` on max calibrators.

After calibration every calibrated weight is replaced by its fake-quantized value (`snap_weights_to_grid`).
Checkpoints stored in float16 put many weights exactly half-way between two INT8 levels;
modelopt rounds `w * (127 / amax)` while ONNX Runtime and TensorRT round `w / (amax / 127)`, and
the two products land on different sides of the tie (387 of 19 M weights of RT-DETRv2 r18vd). A
weight already on the grid is far from any tie, so torch and every backend quantize it alike, and
the torch model computes exactly what it computed before.

`quantize` is the one way rtq quantizes a torch model: the pipeline, sensitivity analysis, the
fidelity report and the benchmark all call it, so what they measure is what the pipeline deploys.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rtq.errors import UserError
from rtq.quant.recipes import Recipe, check_module_globs, prepare_model, to_quant_cfg

log = logging.getLogger(__name__)

Feed = Mapping[str, "np.ndarray | torch.Tensor"]


def _to_tensors(feed: Feed, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).to(device)
            for name, v in feed.items()}


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def make_forward_loop(batches: list[dict[str, torch.Tensor]], progress: bool) -> Callable[[nn.Module], None]:
    """A modelopt forward loop over the cached calibration batches (it may be called more than once)."""

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            if not progress:
                for feed in batches:
                    model(**feed)
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, transient=False) as bar:
                task = bar.add_task("calibrating", total=len(batches))
                for feed in batches:
                    model(**feed)
                    bar.advance(task)

    return forward_loop


def _saw_data(calibrator: Any, histogram_type: type) -> bool:
    if isinstance(calibrator, histogram_type):
        return getattr(calibrator, "_calib_hist", None) is not None
    return calibrator.compute_amax() is not None


def _finish_histogram_calibration(model: nn.Module, method: str, percentile: float) -> None:
    """Load amax from every calibrating quantizer: histogram ones by `method`, max ones as is."""
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.nn import TensorQuantizer

    kwargs: dict[str, Any] = {"percentile": percentile} if method == "percentile" else {}
    for name, module in model.named_modules():
        if not isinstance(module, TensorQuantizer) or module._disabled:
            continue
        calibrator = getattr(module, "_calibrator", None)
        if calibrator is None or getattr(module, "_dynamic", False) or not module._if_calib:
            continue
        # A quantizer the forward pass never reaches (nn.MultiheadAttention.out_proj, whose weight the
        # attention function reads directly) has no statistics: like modelopt's own max path, leave
        # it without an amax; it never runs, in torch or in the export.
        if not _saw_data(calibrator, HistogramCalibrator):
            log.debug("quantizer %s saw no calibration data; left uncalibrated", name)
        elif isinstance(calibrator, HistogramCalibrator):
            module.load_calib_amax(method, **kwargs)
        else:
            module.load_calib_amax()
        module.enable_quant()
        module.disable_calib()


def snap_weights_to_grid(model: nn.Module) -> int:
    """Replace each calibrated, enabled weight by its fake-quantized value; returns how many were set.

    Fake quantization is idempotent on grid values, so the torch outputs do not change; what changes
    is that the exported QuantizeLinear no longer meets exact rounding ties. Quantizers without an
    amax (never calibrated, e.g. `MultiheadAttention.out_proj`, whose weight the attention reads
    directly) are left alone.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    snapped = 0
    with torch.no_grad():
        for module in model.modules():
            quantizer = getattr(module, "weight_quantizer", None)
            weight = getattr(module, "weight", None)
            if not isinstance(quantizer, TensorQuantizer) or not isinstance(weight, torch.Tensor):
                continue
            if not quantizer.is_enabled or quantizer.amax is None or getattr(quantizer, "_dynamic", False):
                continue
            weight.copy_(quantizer(weight))
            snapped += 1
    return snapped


class NothingToQuantize(UserError):
    """The recipe leaves no weight quantizer enabled in this model (every quantized module excluded)."""


def quantize(
    model: nn.Module,
    recipe: Recipe,
    feeds: Iterable[Feed],
    progress: bool = False,
    *,
    in_place: bool = False,
) -> nn.Module:
    """Fake-quantize a deep copy of `model` with `recipe`, calibrated on `feeds` (feed dicts).

    Splits attention if the recipe asks (`split_attention`), checks the recipe's module globs,
    inserts quantizers, calibrates (finishing histogram methods here), then snaps calibrated weights
    to the INT8 grid. `model` stays FP32 unless `in_place`, which quantizes and returns `model`
    itself (attention split in it too). Raises `NothingToQuantize` when the recipe leaves nothing
    quantized.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.model_calib import enable_stats_collection

    device = _model_device(model)
    batches = [_to_tensors(feed, device) for feed in feeds]
    if not batches:
        raise UserError(
            f"recipe {recipe.name!r}: the calibration set is empty; point data.calib.source at a folder "
            "of images"
        )
    target = prepare_model(model if in_place else copy.deepcopy(model), recipe)
    check_module_globs(recipe, target)
    target.eval()
    config = to_quant_cfg(recipe)
    forward_loop = make_forward_loop(batches, progress)
    method = recipe.histogram_method
    try:
        if method is None:
            target = mtq.quantize(target, config, forward_loop)
        else:
            target = mtq.quantize(target, config, forward_loop=None)  # algorithm None: insert quantizers only
            enable_stats_collection(target)
            forward_loop(target)
            _finish_histogram_calibration(target, method, float(recipe.calib.percentile))
    except RuntimeError as error:
        if "nothing would be quantized" not in str(error):
            raise
        raise NothingToQuantize(
            f"recipe {recipe.name!r} leaves no weight quantizer enabled in this model; remove exclusions"
        ) from None
    snap_weights_to_grid(target)
    return target
