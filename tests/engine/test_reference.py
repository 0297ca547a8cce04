"""The engine against values computed by the authors' implementation (its BoundedAttention).

`tests/fixtures/bounded_reference.npz` is a compressed copy of those values (see
`tests/fixtures/make_bounded_reference.py`): prompt positions BOS, three fillers, subject A,
a filler, subject B, end-of-text at 7, then padding up to 77; boxes A and B side by side.
Biases hide with the dtype's lowest value, so the comparison is exact up to 1e-6.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from mifo_engine.attention import AttnLayer
from mifo_engine.config import SynthesisConfig
from mifo_engine.controller import BoundedController
from mifo_engine.guidance import attention_term, in_box_reward
from mifo_engine.layout import Layout, Subject

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bounded_reference.npz"
BOX_A, BOX_B = (0.05, 0.3, 0.45, 0.8), (0.55, 0.3, 0.95, 0.8)
TOKENS = ["<|startoftext|>", "a</w>", "the</w>", "of</w>", "<asset0>", "and</w>", "<asset1>"]
TOKENS += ["<|endoftext|>"] + ["!"] * (77 - 8)
IDS = [1022, 1, 2, 3, 2000, 5, 2001, 1023] + [0] * (77 - 8)


class _Tokenizer:
    """Just what the controller asks of a tokenizer, for the reference prompt."""

    eos_token_id = 1023

    def convert_tokens_to_ids(self, token):
        return {"<asset0>": 2000, "<asset1>": 2001}[token]

    def convert_ids_to_tokens(self, ids):
        return [TOKENS[IDS.index(i)] if i else "!" for i in ids]


def _layer(kind, res):
    place, block = ("mid", 0) if res == 8 else ("up", 1)
    attn = "attn2" if kind == "cross" else "attn1"
    name = f"{place}.{block}.{res}.{attn}.processor"
    return AttnLayer(name, place, block, kind, res)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture
def controller():
    layout = Layout(
        "a the of <asset0> and <asset1>",
        (Subject("<asset0>", "A", BOX_A), Subject("<asset1>", "B", BOX_B)),
    )
    loss = [_layer(k, r) for k in ("cross", "self") for r in (8, 16)]
    return BoundedController(
        layout, _Tokenizer(), IDS, 1, SynthesisConfig(), torch.device("cpu"), loss, []
    )


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_the_fixture_describes_the_reference_inputs(ref, controller):
    _close(ref["boxes"], torch.tensor([BOX_A, BOX_B]))
    g = controller.groups
    assert (g.subjects, g.fillers, g.eos, g.length) == (((4,), (6,)), (1, 2, 3, 5), 7, 77)


@pytest.mark.parametrize("res", [8, 16])
def test_box_masks_match_the_reference(ref, controller, res):
    assert torch.equal(controller.box_raster(res), ref[f"box_masks_{res}"])
    assert ref["box_masks_8"].sum(-1).tolist() == [16, 16]  # corner cells included


@pytest.mark.parametrize("res", [8, 16])
def test_cross_attention_bias_while_denoising_matches_the_reference(ref, controller, res):
    p = res * res
    ours = controller.bias(_layer("cross", res), 2, p, 77, torch.float32)
    theirs = ref[f"ca_bias_{res}"]  # [unconditional, conditional]
    # the same keys hidden (at 16x16 hiding the padding from the background hid 11,040 more)
    assert torch.equal(ours < 0, theirs < 0)
    _close(ours, theirs)


@pytest.mark.parametrize("res", [8, 16])
def test_cross_attention_bias_while_optimising_matches_the_reference(ref, controller, res):
    controller.mode = "optimize"
    p = res * res
    ours = controller.bias(_layer("cross", res), 1, p, 77, torch.float32)
    # the engine optimises on the conditional branch only; the reference's other half is free
    _close(ours, ref[f"ca_bias_optimizing_{res}"][1:])
    assert torch.all(ref[f"ca_bias_optimizing_{res}"][0] == 0)


@pytest.mark.parametrize("res", [8, 16])
@pytest.mark.parametrize("mode", ["denoise", "optimize"])
def test_self_attention_bias_matches_the_reference(ref, controller, res, mode):
    controller.mode = mode
    p = res * res
    batch = 2 if mode == "denoise" else 1
    ours = controller.bias(_layer("self", res), batch, p, p, torch.float32)
    _close(ours, ref[f"sa_bias_{res}"][-batch:])


def test_reward_term_matches_the_reference(ref):
    # fg, bg per layer (3), sample (1) and subject (2); the reference averages over layers
    fg, bg = ref["loss_fg"].mean(0), ref["loss_bg"].mean(0)
    _close(in_box_reward(fg, bg), ref["loss_term_alpha0"])
    summed = attention_term(fg, bg, 0.0, SynthesisConfig())
    _close(summed, ref["loss_term_alpha0"].sum(-1))
