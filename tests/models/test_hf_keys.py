"""The official <-> Hugging Face key mapping: bit-exact round trips for every variant, HF's own key sets.

Round trips use random tensors of each variant's shapes and dtypes: from the official key lists of the
parity fixture (`keys.json`) when ../shared is present, and from rtq's own meta-device signature always.
Derived buffers (anchors, valid mask, points scale, BatchNorm counters) are not carried by design, so
they hold what rtq regenerates; the fixture's real checkpoint checks them against official values
(tests/models/test_convert.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
import torch

from rtq.errors import UserError
from rtq.models.checkpoint import variant_signature
from rtq.models.hf_keys import complete_official, derived_buffers, hf_config, hf_to_official, official_to_hf
from rtq.models.registry import VARIANTS
from rtq.paths import SHARED_DIR

KEYS_JSON = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "keys.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool}
# A `_dsp` variant has its twin's keys and shapes (checked below), so each layout is tested once.
BASE_VARIANTS = sorted(n for n, v in VARIANTS.items() if v.cross_attn_method == "default")
TWINS = {n: n.removesuffix("_dsp") for n in VARIANTS if n.endswith("_dsp")}


def random_state(
    name: str, entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]]
) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes/dtypes; derived buffers hold the values rtq regenerates."""
    derived = derived_buffers(name)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in entries:
        if key in derived:
            state[key] = derived[key].to(dtype)
        else:  # random finite bit patterns: as distinct as randn values, several times cheaper to make
            bits = torch.int16 if dtype == torch.float16 else torch.int32
            top = 0x7C00 if dtype == torch.float16 else 0x7F800000
            state[key] = torch.randint(0, top, shape, generator=generator, dtype=bits).view(dtype)
    return state


def assert_round_trip(name: str, state: dict[str, torch.Tensor]) -> None:
    back = complete_official(hf_to_official(official_to_hf(state)), name)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key


def test_dsp_twins_share_keys_shapes_and_hf_config_but_the_method() -> None:
    for dsp, twin in TWINS.items():
        assert variant_signature(dsp) == variant_signature(twin)
        top, backbone = hf_config(dsp)
        twin_top, twin_backbone = hf_config(twin)
        assert backbone == twin_backbone
        assert {k for k in top if top[k] != twin_top[k]} == {"decoder_method"}


@pytest.mark.parametrize("name", BASE_VARIANTS)
def test_round_trip_of_rtq_signatures(name: str) -> None:
    # Learned tensors as float16, like the released checkpoints; derived buffers keep their dtypes.
    derived = derived_buffers(name)
    entries = [
        (k, shape, derived[k].dtype if k in derived else torch.float16)
        for k, shape in variant_signature(name).items()
    ]
    assert_round_trip(name, random_state(name, entries))


def _official_key_lists() -> dict[str, list[list]]:
    if not KEYS_JSON.is_file():
        pytest.skip(f"parity fixture key lists not found at {KEYS_JSON}")
    return {name: row["state_dict"] for name, row in json.loads(KEYS_JSON.read_text())["official"].items()}


@pytest.mark.parametrize("name", BASE_VARIANTS)
def test_round_trip_of_official_key_lists(name: str) -> None:
    official = _official_key_lists()
    assert name in official, f"{name} has no official key list in {KEYS_JSON}"
    for dsp in (d for d, twin in TWINS.items() if twin == name):
        assert official[dsp] == official[name], f"{dsp} and {name} differ in keys.json"
    entries = [(key, tuple(shape), DTYPES[dtype]) for key, shape, dtype in official[name]]
    assert_round_trip(name, random_state(name, entries))


@pytest.mark.parametrize("name", BASE_VARIANTS)
def test_hf_names_are_transformers_own(name: str) -> None:
    """The mapped keys and shapes are exactly what transformers builds from the variant's HF config."""
    transformers = pytest.importorskip("transformers")
    top, backbone = hf_config(name)
    config = transformers.RTDetrV2Config(backbone_config=transformers.RTDetrResNetConfig(**backbone), **top)
    with torch.device("meta"):
        model = transformers.RTDetrV2ForObjectDetection(config)
        expected = {
            k: tuple(v.shape)
            for k, v in model.state_dict().items()
            if not k.startswith(("class_embed.", "bbox_embed."))  # tied copies save_pretrained leaves out
        }
    state = {k: torch.empty(shape, device="meta") for k, shape in variant_signature(name).items()}
    assert {k: tuple(v.shape) for k, v in official_to_hf(state).items()} == expected


def test_legacy_hub_names_and_tied_copies_map_like_modern_ones() -> None:
    """Files written before transformers 5 (the Hub's) use out_proj, fc1/fc2 and encoder.encoder.N."""
    name = "rtdetrv2_r18vd"
    state = random_state(name, [(k, s, torch.float32) for k, s in variant_signature(name).items()])
    modern = official_to_hf(state)
    legacy = {
        k.replace(".o_proj.", ".out_proj.")
        .replace(".mlp.fc", ".fc")
        .replace("model.encoder.aifi.", "model.encoder.encoder."): v
        for k, v in modern.items()
    }
    tied = {k.removeprefix("model.decoder."): v for k, v in modern.items() if ".class_embed." in k}
    assert len(set(legacy) - set(modern)) > 10
    back = complete_official(hf_to_official({**legacy, **tied}), name)
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_unmappable_keys_fail_in_one_line() -> None:
    with pytest.raises(UserError) as err:
        hf_to_official(
            {"model.enc_score_head.bias": torch.zeros(1), "model.query_embed": torch.zeros(1)}, "x"
        )
    assert "\n" not in str(err.value) and "model.query_embed" in str(err.value)
    with pytest.raises(UserError, match="no Hugging Face name: decoder.extra_head.weight"):
        official_to_hf({"decoder.extra_head.weight": torch.zeros(1)})
