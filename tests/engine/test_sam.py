"""The segmentation model: the built-in tiny SAM, local folders, hub specs, the encoder's input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mifo_engine.errors import ModelLoadError
from mifo_engine.sam import (
    DEFAULT_SEGMENT_MODEL,
    IMAGENET_MEAN,
    build_tiny_sam,
    check_sam_model,
    load_sam,
    sam_model_folder,
    save_sam,
    scaled_size,
)

TINY_PARAMETERS = 77_606


@pytest.fixture(scope="module")
def tiny():
    return load_sam("tiny")


def test_the_default_is_sam_vit_b_at_a_pinned_commit() -> None:
    repo, _, revision = DEFAULT_SEGMENT_MODEL.partition("@")
    assert repo == "facebook/sam-vit-base"
    assert re.fullmatch(r"[0-9a-f]{40}", revision)


def test_tiny_is_seeded_small_and_frozen(tiny) -> None:
    assert tiny.parameters == TINY_PARAMETERS
    assert tiny.input_size == 64 and tiny.revision is None
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert load_sam("tiny").weights_hash == tiny.weights_hash
    other = build_tiny_sam(seed=1).state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in tiny.model.state_dict().items())


def test_scaled_size_fits_the_longer_side_and_rounds() -> None:
    assert scaled_size(96, 80, 64) == (53, 64)  # 53.33 rounds down
    assert scaled_size(80, 96, 64) == (64, 53)
    assert scaled_size(3, 2, 1024) == (683, 1024)  # 682.67 rounds up
    assert scaled_size(64, 64, 64) == (64, 64)


def test_pixel_values_scale_the_longer_side_normalise_and_pad(tiny) -> None:
    rgb = Image.new("RGB", (96, 80), (255, 0, 128))
    pixels, scaled = tiny.pixel_values(rgb)
    assert pixels.shape == (1, 3, 64, 64) and scaled == (53, 64)
    red = (1.0 - IMAGENET_MEAN[0]) / tiny.image_std[0]
    assert torch.allclose(pixels[0, 0, :53], torch.full((53, 64), red))
    assert not pixels[0, :, 53:].any()  # the padding rows


def test_a_saved_folder_loads_back_with_the_same_outputs(tiny, tmp_path) -> None:
    folder = save_sam(tiny, tmp_path / "sam")
    check_sam_model(str(folder))
    again = load_sam(str(folder))
    assert again.model_id == str(folder.resolve()) and again.revision is None
    assert again.input_size == 64 and again.image_mean == tiny.image_mean
    pixels, _ = tiny.pixel_values(Image.new("RGB", (64, 64), (10, 200, 30)))
    assert torch.equal(
        again.model.get_image_embeddings(pixels), tiny.model.get_image_embeddings(pixels)
    )
    assert load_sam(str(folder)).weights_hash == again.weights_hash


def test_a_folder_without_weights_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam"}))
    for call in (lambda: load_sam(str(tmp_path)), lambda: check_sam_model(str(tmp_path))):
        with pytest.raises(ModelLoadError) as err:
            call()
        assert err.value.field == "segment_model" and "incomplete" in err.value.message


def test_a_folder_of_another_model_is_refused(tiny, tmp_path) -> None:
    folder = save_sam(tiny, tmp_path / "sam")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "sam2"}))
    with pytest.raises(ModelLoadError) as err:
        load_sam(str(folder))
    assert "not a SAM" in err.value.message


def test_a_bad_normalisation_is_refused(tiny, tmp_path) -> None:
    folder = save_sam(tiny, tmp_path / "sam")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_std": [1, 0, 1]}))
    with pytest.raises(ModelLoadError) as err:
        load_sam(str(folder))
    assert "preprocessor_config.json" in err.value.message


@pytest.mark.parametrize("spec", ["", "  ", "./no/such/folder", "not-a-model", "a/b/c"])
def test_an_unknown_spec_is_refused(spec: str) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_sam(spec)
    assert err.value.field == "segment_model"


def test_a_hub_id_missing_from_the_cache_is_refused_offline(tmp_path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_sam(DEFAULT_SEGMENT_MODEL, local_files_only=True, cache_dir=tmp_path)
    assert "not in the local cache" in err.value.message
    with pytest.raises(ModelLoadError):
        check_sam_model(DEFAULT_SEGMENT_MODEL, cache_dir=tmp_path)


def test_the_model_folder_a_deployment_fills_its_cache_with(tiny, tmp_path) -> None:
    assert sam_model_folder("tiny") is None  # built in code: nothing to fetch
    folder = save_sam(tiny, tmp_path / "sam")
    assert sam_model_folder(str(folder)) == folder.resolve()
    with pytest.raises(ModelLoadError) as err:  # offline, and not cached
        sam_model_folder(DEFAULT_SEGMENT_MODEL, local_files_only=True, cache_dir=tmp_path)
    assert err.value.field == "segment_model"


def test_the_parameter_count_of_sam_vit_b() -> None:
    """The default checkpoint's architecture (transformers' SamConfig defaults are ViT-B's)."""
    from transformers import SamConfig, SamModel

    with torch.device("meta"):
        model = SamModel(SamConfig())
    assert sum(p.numel() for p in model.parameters()) == 93_735_728
    assert np.prod(model.vision_encoder.pos_embed.shape) == 64 * 64 * 768


def test_the_spec_check_and_the_prompt_check_need_no_torch() -> None:
    """The HTTP front end checks a segmentation request before any model or torch loads."""
    code = (
        "import sys\n"
        "from mifo_engine.sam import DEFAULT_SEGMENT_MODEL, check_sam_model, sam_model_folder\n"
        "from mifo_engine.segprompts import SegmentConfig, check_prompts\n"
        "check_prompts([{'points': [[1, 2]]}], (8, 8), SegmentConfig())\n"
        "assert sam_model_folder('tiny') is None\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_pixel_values_equal_transformers_sam_image_processor(tiny) -> None:
    """The encoder's input as transformers' own SAM processor makes it (PIL back end)."""
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), np.uint8))
    processor = SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}
    )
    theirs = processor(images=image, return_tensors="pt")
    pixels, scaled = tiny.pixel_values(image)
    assert list(scaled) == theirs["reshaped_input_sizes"][0].tolist()
    assert torch.allclose(pixels, theirs["pixel_values"], atol=1e-6)
