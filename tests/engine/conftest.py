"""Shared fixtures for engine tests: the tiny random model ('tiny' is for tests only)."""

from __future__ import annotations

import pytest
import torch

from mifo_engine.config import LearnConfig
from mifo_engine.learning import learn
from mifo_engine.models import load_base_model
from tests.helpers.images import make_scene

# A few steps of each phase, with the attention loss on at every timestep so that short
# runs exercise it; the reward/penalty split keeps the paper's one-to-three ratio.
FAST_LEARN = LearnConfig(
    phase1_steps=8, reward_steps=2, phase2_steps=3, t_attn=1000, diagnostic_timesteps=(100,), seed=0
)


# The tiny model's matrices are too small to gain from a second thread, and two threads
# spin against any other busy process on a 2-core machine (seen: 10x slower runs).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base():
    return load_base_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def scene():
    return make_scene(width=96, height=80, n=2, seed=0)


@pytest.fixture(scope="session")
def tiny_concept(tiny_base, scene):
    image, masks = scene
    return learn(tiny_base, image, masks, names=["left toy", "right toy"], config=FAST_LEARN)
