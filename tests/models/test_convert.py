"""`python -m rtq.models.convert`: official .pth <-> HF folder, bit-exact both ways, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtq.errors import EXIT_USER_ERROR
from rtq.models.convert import main
from rtq.models.registry import VARIANTS, construct
from rtq.paths import SHARED_DIR

FIXTURE = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"
NAME = "rtdetrv2_r18vd"


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random r18vd checkpoint in the release layout: learned tensors float16, derived ones as built."""
    torch.manual_seed(3)
    state = construct(VARIANTS[NAME]).state_dict()
    derived = ("anchors", "valid_mask", "num_points_scale", "num_batches_tracked")
    half = {k: v if k.endswith(derived) else v.half() for k, v in state.items()}
    path = tmp_path_factory.mktemp("official") / "r18.pth"
    torch.save({"ema": {"module": half}}, path)
    return path


def module(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["ema"]["module"]


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_cli_round_trip_is_bit_exact_and_transformers_loads_it(official: Path, tmp_path: Path) -> None:
    assert main(["--to", "hf", str(official), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert main(["--to", "official", str(tmp_path / "hf"), str(tmp_path / "back.pth")]) == 0
    assert_same(module(tmp_path / "back.pth"), module(official))

    transformers = pytest.importorskip("transformers")
    model, info = transformers.RTDetrV2ForObjectDetection.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert model.config.decoder_layers == 3 and model.config.decoder_method == "default"


def test_dsp_variant_by_name_travels_in_the_config(official: Path, tmp_path: Path, capsys) -> None:
    main(["--to", "hf", "--model", f"{NAME}_dsp", str(official), str(tmp_path / "hf")])
    assert '"decoder_method": "discrete"' in (tmp_path / "hf" / "config.json").read_text()
    main(["--to", "official", str(tmp_path / "hf"), str(tmp_path / "back.pth")])
    assert f"({NAME}_dsp, official layout)" in capsys.readouterr().out
    assert_same(module(tmp_path / "back.pth"), module(official))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to", "hf", "--model", "rtdetrv2_r19", "{pth}", "{out}"], "unknown model name 'rtdetrv2_r19'"),
        (["--to", "official", "{pth}", "{out}"], "is not a Hugging Face checkpoint"),
        (
            ["--to", "hf", "--model", "rtdetrv2_r34vd", "{pth}", "{out}"],
            "does not fit rtdetrv2_r34vd: it looks like rtdetrv2_r18vd",
        ),
        (["--to", "hf", "{missing}", "{out}"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(
    args: list[str], expected: str, official: Path, tmp_path: Path, capsys
) -> None:
    paths = {"pth": official, "out": tmp_path / "out", "missing": tmp_path / "missing.pth"}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**paths) for a in args])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_an_hf_folder_is_not_converted_to_hf_again(official: Path, tmp_path: Path, capsys) -> None:
    main(["--to", "hf", str(official), str(tmp_path / "hf")])
    with pytest.raises(SystemExit):
        main(["--to", "hf", str(tmp_path / "hf"), str(tmp_path / "again")])
    assert "already a Hugging Face checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"RT-DETRv2 parity fixture not found at {FIXTURE}")
def test_official_release_checkpoint_round_trip(tmp_path: Path) -> None:
    """The fixture's anchors, masks and scales come from the official code: rtq regenerates them exactly."""
    main(["--to", "hf", str(FIXTURE), str(tmp_path / "hf")])
    main(["--to", "official", str(tmp_path / "hf"), str(tmp_path / "back.pth")])
    assert_same(module(tmp_path / "back.pth"), module(FIXTURE))
