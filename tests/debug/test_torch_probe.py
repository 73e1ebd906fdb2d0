"""Torch sensitivity: `rtq.quant.quantize` of a real network with module groups left in float."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from rtq.debug.auto_recipe import greedy_float_groups
from rtq.debug.torch_probe import TorchProbe, torch_sensitivity


class SmallNet(nn.Module):
    """Three conv stages; the middle one sees inputs with a huge outlier, so INT8 hurts it most."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.middle = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        x = torch.relu(self.stem(images))
        x = x * torch.linspace(1.0, 400.0, x.shape[1]).view(1, -1, 1, 1)  # one channel dwarfs the rest
        return (self.head(torch.relu(self.middle(x))),)


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"images": rng.uniform(0, 1, size=(2, 3, 16, 16)).astype(np.float32)} for _ in range(2)]


def _probe(recipe: str = "int8_default") -> TorchProbe:
    torch.manual_seed(0)
    groups = {"stem": "stem", "middle": "middle", "head": "head"}
    return TorchProbe(SmallNet(), _feeds(), groups, recipe=recipe, log=lambda _line: None)


def test_all_float_is_exact_and_all_int8_is_not() -> None:
    probe = _probe()
    assert probe.measure(["stem", "middle", "head"]).fidelity == 0.0
    assert probe.measure([]).fidelity > 1e-3


def test_ranking_and_greedy_recipe_reach_the_fidelity_target() -> None:
    probe = _probe()
    result = torch_sensitivity(probe)
    assert [g.group for g in result.groups] == ["stem", "middle", "head"]
    assert result.ranked()[0].group == "middle"
    target = result.int8.fidelity * 0.5
    chosen = greedy_float_groups(result, probe.measure, max_fidelity=target)
    assert chosen.met and chosen.float_groups[0] == "middle"
    assert chosen.steps[-1].metrics.fidelity <= target


def test_rtdetr_groups_of_the_deploy_model_are_valid_recipe_exclusions() -> None:
    from rtq.models.build import build_deploy_model
    from rtq.models.families.rtdetr import rtdetr_module_groups
    from rtq.quant.recipes import check_module_globs, recipe_from_dict

    model = build_deploy_model("rtdetrv2_r18vd", None)
    groups = rtdetr_module_groups(model)
    assert {f"backbone.stage.{i}" for i in range(4)} | {
        f"decoder.layer.{i}" for i in range(3)
    } <= groups.keys()
    assert groups["decoder.layer.1"] == "*decoder.decoder.layers.1"
    recipe = recipe_from_dict(
        {"name": "all_float", "base": "INT8_DEFAULT_CFG", "exclude": list(groups.values())}
    )
    check_module_globs(recipe, model)  # every glob names modules of the wrapped network
    assert rtdetr_module_groups(model.model) == groups  # the bare network gives the same groups


def test_a_variant_is_the_quantization_the_pipeline_deploys() -> None:
    """Histogram finishing and all: the probe's number is the error of `quantize`'s model."""
    from rtq.compare.metrics import metric
    from rtq.quant.quantize import quantize

    probe = _probe("int8_histogram")
    deployed = quantize(probe.model, probe.recipe_without(["head"]), _feeds())
    with torch.no_grad():
        outputs = [{"labels": deployed(torch.from_numpy(f["images"]))[0].numpy()} for f in _feeds()]
    measured = probe.measure(["head"]).fidelity
    assert measured > 1e-3
    assert measured == metric("relative_l2")(probe.reference, outputs)


def test_measuring_leaves_the_fp32_model_fp32() -> None:
    probe = _probe()
    probe.measure([])
    assert not any("quantizer" in name for name, _ in probe.model.named_modules())
    assert probe.measure(["stem", "middle", "head"]).fidelity == 0.0
