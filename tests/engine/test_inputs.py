"""Input preparation (METHOD section 1): mask modes, square geometry and typed rejections."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mifo_engine.config import LearnConfig
from mifo_engine.errors import (
    EmptyMask,
    InputError,
    InstanceTooSmall,
    MaskSizeMismatch,
    TooManyInstances,
    UnreadableImage,
)
from mifo_engine.inputs import (
    check_inputs,
    instance_names,
    load_image,
    mask_to_binary,
    prepare_inputs,
)
from tests.helpers import images as h

R = 64
CONFIG = LearnConfig()

MASK_VARIANTS: dict[str, Callable[[Image.Image, Image.Image], Image.Image]] = {
    "L": lambda image, mask: mask,
    "1": lambda image, mask: h.mask_as_mode(mask, "1"),
    "P": lambda image, mask: h.mask_as_mode(mask, "P"),
    "LA": lambda image, mask: h.mask_as_mode(mask, "LA"),
    "I;16": lambda image, mask: h.mask_as_mode(mask, "I;16"),
    "I": lambda image, mask: h.mask_as_mode(mask, "I"),
    "RGB": lambda image, mask: h.mask_as_rgb(mask),
    "RGBA alpha-only, black": lambda image, mask: h.mask_as_rgba_alpha(mask),
    "RGBA alpha-only, white": lambda image, mask: h.mask_as_rgba_alpha(mask, (255, 255, 255)),
    "RGBA white on black": lambda image, mask: h.mask_as_rgba_white_on_black(mask),
    "RGBA cut-out": h.mask_as_cutout,
    "JPEG L": lambda image, mask: h.mask_as_jpeg(mask),
    "JPEG RGB": lambda image, mask: h.mask_as_jpeg(mask, mode="RGB"),
}


def _as_file(image: Image.Image) -> bytes | Image.Image:
    """PNG bytes of the image; 32-bit integer masks exist in memory only (PNG has no such mode)."""
    return image if image.mode == "I" else h.encode(image, "PNG")


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h_, w_ = a.shape
    out[max(dy, 0) : h_ + min(dy, 0), max(dx, 0) : w_ + min(dx, 0)] = a[
        max(-dy, 0) : h_ + min(-dy, 0), max(-dx, 0) : w_ + min(-dx, 0)
    ]
    return out


def _edge_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` (Chebyshev) of the mask's boundary."""
    offsets = [(dy, dx) for dy in range(-width, width + 1) for dx in range(-width, width + 1)]
    grown = np.logical_or.reduce([_shift(mask, dy, dx) for dy, dx in offsets])
    shrunk = np.logical_and.reduce([_shift(mask, dy, dx) for dy, dx in offsets])
    return grown & ~shrunk


# --- mask modes


@pytest.mark.parametrize("variant", sorted(MASK_VARIANTS))
def test_every_mask_mode_gives_the_same_binary_mask(variant: str) -> None:
    image, masks = h.make_scene()
    expected = np.asarray(masks[0]) > 127
    converted = MASK_VARIANTS[variant](image, masks[0])
    assert np.array_equal(mask_to_binary(converted, 0.5), expected)
    reopened = load_image(_as_file(converted), field="masks[0]")
    assert np.array_equal(mask_to_binary(reopened, 0.5), expected)


def test_every_mask_mode_prepares_to_the_same_masks() -> None:
    image, masks = h.make_scene()
    reference = prepare_inputs(image, masks, resolution=R, config=CONFIG)
    for variant, convert in MASK_VARIANTS.items():
        files = [_as_file(convert(image, m)) for m in masks]
        prepared = prepare_inputs(image, files, resolution=R, config=CONFIG)
        assert torch.equal(prepared.masks, reference.masks), variant
        assert prepared.shares == reference.shares


def test_jpeg_noise_makes_no_speckles_and_no_holes() -> None:
    image, masks = h.make_wide_scene()
    expected = np.asarray(masks[0]) > 127
    noisy = h.mask_as_jpeg(masks[0], quality=20)
    noise = np.abs(np.asarray(noisy, dtype=int) - np.asarray(masks[0], dtype=int))
    assert noise.max() > 20  # the round trip really is noisy
    found = mask_to_binary(noisy, CONFIG.mask_threshold)
    wrong = found != expected
    # Away from the true outline every pixel is right: no speckles outside, no holes inside.
    assert not (wrong & ~_edge_band(expected, 2)).any()
    prepared = prepare_inputs(image, [noisy, masks[1]], resolution=R, config=CONFIG)
    clean = prepare_inputs(image, masks, resolution=R, config=CONFIG)
    differing = (prepared.masks[0] != clean.masks[0]).numpy()
    assert not (differing & ~_edge_band(clean.masks[0].numpy() > 0, 1)).any()


def test_soft_edges_follow_the_threshold() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    found = mask_to_binary(Image.fromarray(ramp), 0.5)
    assert found[0, 127] == np.False_ and found[0, 128] == np.True_
    assert mask_to_binary(Image.fromarray(ramp), 0.9)[0].sum() == 256 - 230


# --- geometry


def test_non_square_centre_crop_maps_known_pixels() -> None:
    width, height = 643, 512  # kept square: x in [65, 577), 8 source pixels per output pixel
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[8 * 20 : 8 * 26, 65 + 8 * 10 : 65 + 8 * 16] = (
        255,
        0,
        0,
    )  # output rows 20-25, cols 10-15
    pixels[:, :60] = (0, 255, 0)  # cut away by the crop
    marker = np.zeros((height, width), np.uint8)
    marker[8 * 20 : 8 * 26, 65 + 8 * 10 : 65 + 8 * 16] = 255
    prepared = prepare_inputs(
        Image.fromarray(pixels), [Image.fromarray(marker)], resolution=R, config=CONFIG
    )
    expected = np.zeros((R, R), bool)
    expected[20:26, 10:16] = True
    assert np.array_equal(prepared.masks[0].numpy() > 0, expected)
    rgb = np.asarray(prepared.image_rgb, dtype=int)
    assert prepared.image_rgb.size == (R, R)
    assert rgb[22, 12, 0] > 230 and rgb[22, 12, 1] < 30  # the marker's centre is red
    assert abs(rgb[5, 40] - 128).max() < 4  # grey away from it
    assert (rgb[:, :, 1] < 140).all()  # no green from outside the square
    assert np.allclose(prepared.image.permute(1, 2, 0).numpy(), rgb / 127.5 - 1, atol=1e-6)


def test_wide_scene_keeps_image_and_masks_aligned() -> None:
    image, masks = h.make_wide_scene()
    prepared = prepare_inputs(image, masks, resolution=R, config=CONFIG)
    red = prepared.image[0]
    for mask in prepared.masks:
        inside = mask > 0
        assert red[inside].mean() > red[~inside].mean() + 0.3  # the blobs are the reddest
    assert abs(prepared.shares[0] - prepared.shares[1]) < 0.02


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_image_and_masks_alike(orientation: int) -> None:
    image, masks = h.make_scene(96, 80)
    upright = prepare_inputs(image, masks, resolution=R, config=CONFIG)
    turned_image = h.with_exif_orientation(image, orientation, "JPEG")
    turned_masks = [h.with_exif_orientation(m, orientation, "PNG") for m in masks]
    prepared = prepare_inputs(turned_image, turned_masks, resolution=R, config=CONFIG)
    assert torch.equal(prepared.masks, upright.masks)
    assert (prepared.image - upright.image).abs().mean() < 0.05  # JPEG noise only
    # Masks painted on the upright picture need no EXIF tag of their own.
    drawn_upright = [h.encode(m) for m in masks]
    mixed = prepare_inputs(turned_image, drawn_upright, resolution=R, config=CONFIG)
    assert torch.equal(mixed.masks, upright.masks)


def test_mask_drawn_on_unrotated_pixels_is_a_size_mismatch_with_a_hint() -> None:
    image, masks = h.make_scene(96, 80)
    turned_image = h.with_exif_orientation(image, 6, "JPEG")
    raw_mask = masks[0].transpose(Image.Transpose.ROTATE_90)  # stored pixels, no tag
    with pytest.raises(MaskSizeMismatch, match="swapped") as caught:
        prepare_inputs(turned_image, [raw_mask], resolution=R, config=CONFIG)
    assert caught.value.field == "masks[0]"


def test_outputs_are_typed_and_ranged() -> None:
    image, masks = h.make_scene(n=3)
    prepared = prepare_inputs(image, masks, resolution=R, config=CONFIG)
    assert prepared.image.shape == (3, R, R) and prepared.image.dtype == torch.float32
    assert prepared.image.min() >= -1 and prepared.image.max() <= 1
    assert prepared.masks.shape == (3, R, R) and prepared.masks.dtype == torch.float32
    assert set(prepared.masks.unique().tolist()) == {0.0, 1.0}
    assert prepared.shares == tuple(float(m.mean()) for m in prepared.masks)
    assert check_inputs(image, masks, resolution=R, config=CONFIG) == prepared.shares


def test_high_bit_depth_and_transparent_images_become_8_bit_rgb() -> None:
    gray = np.full((80, 96), 40000, np.uint16)
    _, masks = h.make_scene()
    prepared = prepare_inputs(Image.fromarray(gray), masks, resolution=R, config=CONFIG)
    assert abs(int(np.asarray(prepared.image_rgb)[0, 0, 0]) - round(40000 / 257)) <= 1
    clear = Image.new("RGBA", (96, 80), (0, 0, 0, 0))
    prepared = prepare_inputs(clear, masks, resolution=R, config=CONFIG)
    assert (np.asarray(prepared.image_rgb) == 255).all()  # transparency shows as white


def test_load_image_reads_the_content_not_the_file_name(tmp_path: Path) -> None:
    image, _ = h.make_scene()
    path = tmp_path / "scene.jpg"
    path.write_bytes(h.encode(image, "PNG"))
    loaded = load_image(path, field="image")
    assert np.array_equal(np.asarray(loaded), np.asarray(image))
    assert load_image(str(path), field="image").size == image.size
    assert load_image(h.encode(image, "PNG"), field="image").size == image.size


# --- rejections


def test_no_masks_is_rejected() -> None:
    image, _ = h.make_scene()
    with pytest.raises(InputError) as caught:
        prepare_inputs(image, [], resolution=R, config=CONFIG)
    assert caught.value.field == "masks" and caught.value.fix
    with pytest.raises(InputError, match="list") as caught:
        prepare_inputs(image, h.encode(image), resolution=R, config=CONFIG)  # type: ignore[arg-type]
    assert caught.value.field == "masks"


def test_too_many_masks_are_rejected() -> None:
    image, masks = h.make_scene(n=3)
    with pytest.raises(TooManyInstances, match="max_instances") as caught:
        prepare_inputs(image, masks, resolution=R, config=CONFIG.replace(max_instances=2))
    assert caught.value.field == "masks" and "at most 2" in (caught.value.fix or "")


def test_mask_of_another_size_is_rejected_with_both_sizes() -> None:
    image, masks = h.make_scene(96, 80)
    wrong = masks[1].resize((95, 80))
    with pytest.raises(MaskSizeMismatch) as caught:
        prepare_inputs(image, [masks[0], wrong], resolution=R, config=CONFIG)
    assert caught.value.field == "masks[1]"
    assert "95x80" in str(caught.value) and "96x80" in str(caught.value)


def test_empty_mask_is_rejected() -> None:
    image, masks = h.make_scene()
    blank = Image.new("L", image.size, 0)
    faint = Image.new("L", image.size, 100)  # below the 50 % threshold everywhere
    for empty in (blank, faint, h.mask_as_rgba_alpha(blank)):
        with pytest.raises(EmptyMask, match="empty") as caught:
            prepare_inputs(image, [masks[0], empty], resolution=R, config=CONFIG)
        assert caught.value.field == "masks[1]" and caught.value.fix


def test_instance_outside_the_centre_square_is_rejected_with_the_fix() -> None:
    image, masks = h.make_wide_scene()
    outside = np.zeros((512, 643), np.uint8)
    outside[200:300, 5:55] = 255
    with pytest.raises(EmptyMask, match="outside the centred 512x512 square") as caught:
        prepare_inputs(image, [masks[0], Image.fromarray(outside)], resolution=R, config=CONFIG)
    assert caught.value.field == "masks[1]"
    assert "crop the image" in (caught.value.fix or "")


def test_instance_lost_in_downscaling_is_too_small() -> None:
    image, masks = h.make_wide_scene()
    speck = np.zeros((512, 643), np.uint8)
    speck[1, 66] = 255  # between the pixels that nearest-neighbour scaling samples
    with pytest.raises(InstanceTooSmall, match="vanishes") as caught:
        prepare_inputs(image, [Image.fromarray(speck)], resolution=R, config=CONFIG)
    assert caught.value.field == "masks[0]"


def test_instance_below_the_minimum_share_is_rejected() -> None:
    image, masks = h.make_scene()
    config = CONFIG.replace(min_instance_share=0.15)  # the paper's floor; the blobs cover ~6 %
    with pytest.raises(InstanceTooSmall, match="min_instance_share") as caught:
        prepare_inputs(image, masks, resolution=R, config=config)
    assert caught.value.field == "masks[0]"


def test_small_instance_is_only_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    image, masks = h.make_scene()
    with caplog.at_level(logging.WARNING, logger="mifo_engine.inputs"):
        prepared = prepare_inputs(
            image, masks, resolution=R, config=CONFIG.replace(warn_instance_share=0.1)
        )
    assert len(prepared.shares) == 2
    assert "masks[0]" in caplog.text and "masks[1]" in caplog.text


def test_unreadable_files_are_rejected_naming_the_input(tmp_path: Path) -> None:
    image, masks = h.make_scene()
    text_file = tmp_path / "mask.png"
    text_file.write_text("not a picture")
    png = h.encode(image, "PNG")
    cases: list[tuple[object, str]] = [
        (b"definitely not an image", "is not an image"),
        (text_file, "is not an image"),
        (tmp_path / "missing.png", "no file"),
        (png[: len(png) // 2], "damaged or truncated"),
        (h.encode(image, "GIF"), "GIF"),
        (12345, "file path, bytes or a PIL image"),
    ]
    for source, message in cases:
        with pytest.raises(UnreadableImage, match=message) as caught:
            prepare_inputs(source, masks, resolution=R, config=CONFIG)  # type: ignore[arg-type]
        assert caught.value.field == "image"
        with pytest.raises(UnreadableImage, match=message) as caught:
            prepare_inputs(image, [masks[0], source], resolution=R, config=CONFIG)  # type: ignore[list-item]
        assert caught.value.field == "masks[1]"


def test_white_on_black_rgba_with_transparent_parts_keeps_its_white_shape():
    from mifo_engine.inputs import mask_to_binary

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[3:6, 3:6, :3] = 255  # nine white pixels
    rgba[:, 0, 3] = 0  # one transparent column, black
    got = mask_to_binary(Image.fromarray(rgba, "RGBA"), 0.5)
    assert got.sum() == 9 and got[3:6, 3:6].all()


@pytest.mark.parametrize(
    ("names", "field", "says"),
    [
        (["left", ""], "names[1]", "names[1] is empty"),
        (["left", "right", "left"], "names[2]", "names[2] is 'left' again"),
        (["left", "<right>", "x"], "names[1]", "names[1] is '<right>'"),
    ],
)
def test_a_bad_instance_name_is_named_by_its_place(names, field, says) -> None:
    with pytest.raises(InputError) as err:
        instance_names(names, len(names))
    assert err.value.field == field and says in str(err.value) and err.value.fix


def test_instance_names_default_to_assets_and_are_trimmed() -> None:
    assert instance_names(None, 2) == ["asset0", "asset1"]
    assert instance_names([" red car ", "dog"], 2) == ["red car", "dog"]
    with pytest.raises(InputError) as err:
        instance_names(["one"], 2)
    assert err.value.field == "names"


def test_two_masks_of_the_same_instance_are_refused_naming_both():
    from mifo_engine.errors import MasksOverlap
    from mifo_engine.inputs import mask_overlap

    image = Image.new("RGB", (64, 64), (120, 120, 120))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    nearly = Image.new("L", (64, 64), 0)
    nearly.paste(255, (8, 8, 40, 42))  # the same instance, painted a little further down
    apart = Image.new("L", (64, 64), 0)
    apart.paste(255, (44, 8, 60, 40))
    config = LearnConfig()
    with pytest.raises(MasksOverlap) as refused:
        check_inputs(image, [apart, mask, nearly], resolution=64, config=config)
    assert refused.value.field == "masks[2]"
    assert "masks[1] and masks[2] share 94%" in refused.value.message
    # A nested instance (a cup inside a person) overlaps far less than one painted twice.
    inside = Image.new("L", (64, 64), 0)
    inside.paste(255, (16, 16, 24, 24))
    assert check_inputs(image, [mask, inside], resolution=64, config=config)
    assert check_inputs(
        image, [mask, nearly], resolution=64, config=config.replace(max_mask_overlap=1.0)
    )
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert mask_overlap(a, b) == pytest.approx(4 / 12)
    assert mask_overlap(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
