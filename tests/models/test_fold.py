"""BatchNorm folding keeps the deploy model's outputs and leaves no BatchNorm behind."""

from __future__ import annotations

import torch
from torch import nn

from rtq.models import build_deploy_model
from rtq.models.presnet import FrozenBatchNorm2d


def test_folded_deploy_model_matches_unfolded_and_has_no_batch_norm() -> None:
    torch.manual_seed(0)
    unfolded = build_deploy_model("rtdetrv2_r18vd", fold_batch_norm=False)
    for module in unfolded.modules():  # non-trivial statistics, so folding has something to do
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.8, 1.2)
    folded = build_deploy_model("rtdetrv2_r18vd", fold_batch_norm=False)
    folded.load_state_dict(unfolded.state_dict())
    from rtq.models.fold import fold_batch_norms

    assert fold_batch_norms(folded) == 45  # r18vd after RepVGG fusion
    assert not any(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in folded.modules())
    images = torch.rand(1, 3, 640, 640)
    sizes = torch.tensor([[640, 480]])
    with torch.inference_mode():
        ref_feats = unfolded.model.encoder(unfolded.model.backbone(images))
        got_feats = folded.model.encoder(folded.model.backbone(images))
    for ref, got in zip(ref_feats, got_feats, strict=True):
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    with torch.inference_mode():
        _, _, ref_scores = unfolded(images, sizes)
        _, _, got_scores = folded(images, sizes)
    assert torch.allclose(got_scores.sort(dim=-1).values, ref_scores.sort(dim=-1).values, atol=1e-4)
