"""The attention layers a UNet has, and processor installation (which layers each part of
the method reads: test_layers.py)."""

import pytest
import torch

from mifo_engine.attention import (
    CaptureController,
    installed_processors,
    unet_attention_layers,
)
from mifo_engine.models import build_unet_on_meta, sd21_unet_config


@pytest.fixture(scope="module")
def sd21_layers():
    unet = build_unet_on_meta(sd21_unet_config())
    assert next(unet.parameters()).device.type == "meta"
    return unet_attention_layers(unet.attn_processors, unet.config, latent_size=64)


def test_sd21_has_16_cross_attention_layers_at_the_expected_resolutions(sd21_layers):
    cross = [lay for lay in sd21_layers if lay.kind == "cross"]
    assert len(cross) == 16
    by_place = {}
    for lay in cross:
        by_place.setdefault(lay.place, []).append(lay.resolution)
    assert sorted(by_place["down"]) == [16, 16, 32, 32, 64, 64]
    assert by_place["mid"] == [8]
    assert sorted(by_place["up"]) == [16, 16, 16, 32, 32, 32, 64, 64, 64]


def test_processors_restored_on_exit_and_on_error(tiny_base):
    unet = tiny_base.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    layers = unet_attention_layers(unet.attn_processors, unet.config, tiny_base.latent_size)
    capture = CaptureController(layers[:3])
    with installed_processors(unet, capture.processors()):
        assert type(unet.attn_processors[layers[0].name]).__name__ == "MifoAttnProcessor"
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    with pytest.raises(RuntimeError), installed_processors(unet, capture.processors()):
        raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_capture_matches_fused_attention_and_only_when_active(tiny_base):
    unet = tiny_base.unet
    layers = unet_attention_layers(unet.attn_processors, unet.config, tiny_base.latent_size)
    cross = [lay for lay in layers if lay.kind == "cross"]
    capture = CaptureController(cross)
    capture.select([cross[0].name])
    z = torch.randn(
        1,
        4,
        tiny_base.latent_size,
        tiny_base.latent_size,
        generator=torch.Generator().manual_seed(0),
    )
    text = torch.randn(
        1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        reference = unet(z, 10, encoder_hidden_states=text).sample
        with installed_processors(unet, capture.processors()):
            capture.reset(False)
            off = unet(z, 10, encoder_hidden_states=text).sample
            assert capture.maps == {}
            capture.reset(True)
            on = unet(z, 10, encoder_hidden_states=text).sample
    assert torch.allclose(off, reference, atol=1e-5)
    assert torch.allclose(on, reference, atol=1e-5)
    assert list(capture.maps) == [cross[0].name]
    maps = capture.maps[cross[0].name]
    assert maps.shape == (1, cross[0].resolution ** 2, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(1, cross[0].resolution ** 2), atol=1e-5)


def test_truncated_forward_stops_after_the_last_loss_block(tiny_base):
    from mifo_engine.attention import last_block, truncated_forward

    unet = tiny_base.unet
    layers = unet_attention_layers(unet.attn_processors, unet.config, tiny_base.latent_size)
    loss = [lay for lay in layers if (lay.place, lay.block) in {("mid", 0), ("up", 1)}]
    block = last_block(unet, loss)
    assert block is unet.up_blocks[1]
    reached = []
    handle = unet.up_blocks[2].register_forward_hook(lambda *a: reached.append(1))
    z = torch.randn(1, 4, tiny_base.latent_size, tiny_base.latent_size)
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    try:
        with torch.no_grad(), truncated_forward(block) as run:
            assert run(lambda: unet(z, 10, encoder_hidden_states=text)) is True
        assert reached == []
        with torch.no_grad():
            unet(z, 10, encoder_hidden_states=text)  # the hook is gone afterwards
        assert reached == [1]
    finally:
        handle.remove()
