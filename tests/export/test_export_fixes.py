"""Export fixes: the MatMul form of antialiased resize against torch, the registry, and RF-DETR's
export failing without a fix and matching torch with each one (random weights, 320 x 320)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtq.errors import UserError
from rtq.export.export_fixes import (
    EXPORT_FIXES,
    applied_fixes,
    decomposition_error,
    fixes_for_op,
    resize_as_matmul,
    resize_weights,
)
from rtq.export.onnx_export import export_module

SIDE = 320  # nano's 24 x 24 position grid is really resized (to 20 x 20) at this size


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("in_hw,out_hw", [((24, 24), (20, 20)), ((24, 24), (37, 37)), ((37, 30), (24, 41))])
def test_matmul_resize_is_torchs_antialiased_resize(
    mode: str, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> None:
    x = torch.randn(2, 3, *in_hw, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = F.interpolate(x, size=out_hw, mode=mode, align_corners=False, antialias=True)
    assert float((resize_as_matmul(x, out_hw, mode) - reference).abs().max()) < 1e-12  # same formula
    assert decomposition_error(in_hw, out_hw, mode) < 5e-5  # float32, as exported
    assert np.allclose(resize_weights(in_hw[0], out_hw[0], mode).sum(axis=1), 1.0)


def test_registry_names_fixes_per_op() -> None:
    assert fixes_for_op("aten::_upsample_bicubic2d_aa") == [
        "fold_position_embeddings",
        "decompose_antialiased_resize",
    ]
    assert fixes_for_op("_upsample_bilinear2d_aa") == ["decompose_antialiased_resize"]
    assert fixes_for_op("aten::linalg_eigvals") == []
    assert {fix.kind for fix in EXPORT_FIXES.values()} == {"fold", "decompose"}


def test_unknown_fix_is_one_line_user_error() -> None:
    with pytest.raises(UserError, match=r"export fix 'nope' is not known; use any of: fold_position"):
        with applied_fixes(nn.Identity(), (SIDE, SIDE), ["nope"]):
            pass


class _Eig(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[:, 0, :4, :4]).real


class _Unfixable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = _Eig()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_op_without_fix_names_op_module_and_known_fixes(tmp_path: Path) -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(UserError) as err:
        export_module(_Unfixable(), (x,), tmp_path / "bad.onnx", (("x",), ("y",)), 17, True, False)
    text = str(err.value)
    assert "\n" not in text
    assert "'aten::linalg_eigvals' in module 'head' (_Eig): no export fix handles it" in text
    assert "fold_position_embeddings (aten::_upsample_bicubic2d_aa)" in text
    assert not list(tmp_path.iterdir())


# ---- RF-DETR -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deploy() -> nn.Module:
    pytest.importorskip("transformers")
    from rtq.models.rfdetr import RfDetrDeploy, build_rfdetr

    return RfDetrDeploy(build_rfdetr("nano", seed=0), SIDE, selection=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, name: str, x: torch.Tensor) -> list[np.ndarray]:
    return [np.asarray(v) for v in session.run(None, {name: x.numpy()})]


def _assert_matches_torch(
    deploy: nn.Module, session: ort.InferenceSession, name: str, images: torch.Tensor
) -> list[np.ndarray]:
    """Every image for which both picked the same encoder queries agrees with torch to float tolerance."""
    from rtq.models.rfdetr import parity

    with torch.no_grad():
        reference = [t.numpy() for t in deploy(images)]
    outputs = _run(session, name, images)
    result = parity(reference, outputs)
    assert result.matched >= len(images) // 2, result  # near-ties swap a few queries, not most images
    assert result.max_box_error < 1e-4, result
    assert result.max_logit_error < 1e-3, result
    return outputs


def test_export_fails_without_fix_naming_op_and_module(deploy: nn.Module, tmp_path: Path) -> None:
    from rtq.models.rfdetr import export_rfdetr_onnx

    with pytest.raises(UserError) as err:
        export_rfdetr_onnx(deploy, tmp_path / "model.onnx", fixes=())
    text = str(err.value)
    assert "\n" not in text
    assert (
        "'aten::_upsample_bicubic2d_aa' in module 'model.model.backbone.backbone.embeddings' "
        "(RfDetrDinov2Embeddings): apply export fix fold_position_embeddings or decompose_antialiased_resize"
    ) in text
    assert not list(tmp_path.iterdir())


def test_folded_export_matches_torch_and_batches(
    deploy: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    from rtq.models.rfdetr import export_rfdetr_onnx

    path = export_rfdetr_onnx(deploy, tmp_path / "model.onnx", fixes=["fold_position_embeddings"])
    embeddings = deploy.model.model.backbone.backbone.embeddings
    assert "interpolate_pos_encoding" not in vars(embeddings)  # the model is restored after export
    assert not hasattr(embeddings, "folded_position_embeddings")
    session = _session(path)
    batched = _assert_matches_torch(deploy, session, "images", images)
    for i in range(len(images)):
        single = _run(session, "images", images[i : i + 1])
        for together, alone in zip(batched, single, strict=True):
            assert np.abs(together[i] - alone[0]).max() < 1e-5


def test_decomposed_export_matches_torch_with_rfdetr_io(
    deploy: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    from rtq.models.rfdetr import export_rfdetr_onnx

    path = export_rfdetr_onnx(
        deploy, tmp_path / "model.onnx", fixes=["decompose_antialiased_resize"], contract="rfdetr"
    )
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["dets", "labels", "selected_proposals"]
    assert [d.dim_param or d.dim_value for d in graph.output[1].type.tensor_type.shape.dim] == ["N", 300, 91]
    _assert_matches_torch(deploy, _session(path), "input", images)
