"""The metric arithmetic on hand-computed values, and the paper's composite from its tables."""

import math

import numpy as np
import pytest
from PIL import Image

from mifo_engine.metrics import (
    ImageScore,
    Spread,
    SubjectScore,
    box_mask,
    composite_score,
    cosine,
    identity_scores,
    masked_crop,
    metric_row,
    metric_rows,
    region_mask,
)

# "MIFO: Learning and Synthesizing Multi-Instance from One Image", Table 2 (precise
# synthesis): method -> (SIM-C, SIM-D, NSIM-D, CS) as published.
PAPER_TABLE_2 = {
    "BD": (0.608, 0.762, 0.721, 0.129),
    "MD": (0.628, 0.778, 0.730, 0.132),
    "BA": (0.606, 0.790, 0.727, 0.131),
    "Ours": (0.609, 0.792, 0.726, 0.132),
}
# Table 1 (semantic learning): method -> (SIM-D, NSIM-D, its third column).
PAPER_TABLE_1 = {
    "TI-m": (0.7525, 0.7094, 0.5338),
    "DB-m": (0.7685, 0.7220, 0.5548),
    "BaS": (0.7781, 0.7253, 0.5643),
    "Ours": (0.7918, 0.7258, 0.5746),
}


@pytest.mark.parametrize("method", sorted(PAPER_TABLE_2))
def test_the_composite_reproduces_table_2(method: str) -> None:
    sim_c, sim_d, nsim_d, published = PAPER_TABLE_2[method]
    cs = composite_score(sim_c, sim_d, nsim_d)
    assert cs is not None and round(cs, 3) == published


@pytest.mark.parametrize("method", sorted(PAPER_TABLE_1))
def test_table_1s_third_column_is_sim_d_times_nsim_d_not_the_composite(method: str) -> None:
    sim_d, nsim_d, third = PAPER_TABLE_1[method]
    assert abs(sim_d * nsim_d - third) < 1e-4  # cut (not rounded) to 4 places in the paper
    assert abs(sim_d * (1 - nsim_d) - third) > 0.1


def test_cosine_of_hand_made_vectors() -> None:
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.array([3.0, 4.0]), np.array([-3.0, -4.0])) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_identity_scores_take_the_own_instance_and_the_mean_of_the_others() -> None:
    instances = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    sim_d, nsim_d = identity_scores(np.array([1.0, 0.0, 0.0]), instances, 0)
    assert sim_d == pytest.approx(1.0) and nsim_d == pytest.approx((0.0 + 0.6) / 2)
    sim_d, nsim_d = identity_scores(np.array([0.0, 2.0, 0.0]), instances, 2)
    assert sim_d == pytest.approx(0.8) and nsim_d == pytest.approx(0.5)  # (0 + 1) / 2
    assert identity_scores(np.array([1.0, 1.0]), np.array([[1.0, 0.0]]), 0)[1] is None


def test_composite_score_and_a_missing_term() -> None:
    assert composite_score(0.5, 1.0, 0.3) == pytest.approx(0.35)
    assert composite_score(0.5, 1.0, None) is None


def test_box_mask_rounds_to_pixels_and_keeps_a_thin_box() -> None:
    mask = box_mask((0.25, 0.5, 0.75, 1.0), (8, 4))  # width 8, height 4
    assert mask.shape == (4, 8)
    assert np.array_equal(np.argwhere(mask.any(axis=1)).ravel(), [2, 3])
    assert np.array_equal(np.argwhere(mask.any(axis=0)).ravel(), [2, 3, 4, 5])
    thin = box_mask((0.5, 0.5, 0.51, 0.51), (8, 4))
    assert thin.sum() == 1 and thin[2, 4]


def test_region_mask_scales_a_refined_mask_and_falls_back_to_the_box() -> None:
    refined = np.array([[True, False], [False, False]])
    region = region_mask((0.0, 0.0, 1.0, 1.0), (4, 4), refined)
    assert region[:2, :2].all() and region.sum() == 4
    empty = region_mask((0.0, 0.0, 0.5, 0.5), (4, 4), np.zeros((2, 2), bool))
    assert np.array_equal(empty, box_mask((0.0, 0.0, 0.5, 0.5), (4, 4)))


def test_masked_crop_crops_paints_and_pads_to_a_square() -> None:
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    mask = np.zeros((4, 6), bool)
    mask[1:3, 1:5] = True
    mask[2, 4] = False  # inside the bounding box, outside the mask
    crop = np.asarray(masked_crop(Image.fromarray(pixels), mask, (9, 8, 7)))
    assert crop.shape == (4, 4, 3)  # 2 x 4 crop, one fill row above and below
    assert (crop[0] == (9, 8, 7)).all() and (crop[3] == (9, 8, 7)).all()
    assert np.array_equal(crop[1], pixels[1, 1:5])
    assert np.array_equal(crop[2, :3], pixels[2, 1:4]) and tuple(crop[2, 3]) == (9, 8, 7)


def test_masked_crop_refuses_an_empty_region() -> None:
    with pytest.raises(ValueError, match="empty"):
        masked_crop(Image.new("RGB", (4, 4)), np.zeros((4, 4), bool), (0, 0, 0))


def test_spread_is_the_mean_and_population_std_of_the_values_present() -> None:
    spread = Spread.of([1.0, 2.0, 3.0, None])
    assert spread.mean == pytest.approx(2.0) and spread.count == 3
    assert spread.std == pytest.approx(math.sqrt(2 / 3))
    assert Spread.of([None]) == Spread(None, None, 0)


def _image(sim_c: float, *subjects: tuple[str, float, float | None]) -> ImageScore:
    return ImageScore(
        prompt="p",
        text="t",
        seed=0,
        sim_c=sim_c,
        subjects=tuple(
            SubjectScore(tok, d, n, composite_score(sim_c, d, n)) for tok, d, n in subjects
        ),
    )


def test_a_row_holds_means_spreads_and_the_composite_of_its_means() -> None:
    a = _image(0.6, ("<asset0>", 0.8, 0.7))
    b = _image(0.4, ("<asset0>", 0.6, 0.5))
    row = metric_row("<asset0>", "toy", [(a, a.subjects[0]), (b, b.subjects[0])])
    assert row.images == 2
    assert row.sim_c.mean == pytest.approx(0.5) and row.sim_c.std == pytest.approx(0.1)
    assert row.sim_d.mean == pytest.approx(0.7) and row.nsim_d.mean == pytest.approx(0.6)
    assert row.cs == pytest.approx(0.5 * 0.7 * 0.4)
    per_image = [0.6 * 0.8 * 0.3, 0.4 * 0.6 * 0.5]  # 0.144 and 0.12
    assert row.cs_std == pytest.approx(float(np.std(per_image)))
    assert row.to_dict()["sim_d_std"] == pytest.approx(0.1)


def test_rows_follow_the_tokens_and_the_mean_row_takes_every_pair() -> None:
    scores = [
        _image(0.5, ("<asset0>", 0.9, 0.2)),
        _image(0.7, ("<asset1>", 0.5, 0.4)),
        _image(0.3, ("<asset0>", 0.7, 0.4), ("<asset1>", 0.3, 0.6)),
    ]
    rows, mean = metric_rows(scores, {"<asset0>": "a", "<asset1>": "b"})
    assert [(r.token, r.name, r.images) for r in rows] == [
        ("<asset0>", "a", 2),
        ("<asset1>", "b", 2),
    ]
    assert rows[0].sim_c.mean == pytest.approx(0.4) and rows[1].sim_d.mean == pytest.approx(0.4)
    assert mean.images == 4 and mean.sim_c.mean == pytest.approx((0.5 + 0.7 + 0.3 + 0.3) / 4)
    assert mean.sim_d.mean == pytest.approx(0.6)


def test_a_single_instance_has_no_nsim_d_and_no_composite() -> None:
    only = _image(0.5, ("<asset0>", 0.9, None))
    rows, mean = metric_rows([only], {"<asset0>": "a"})
    assert rows[0].nsim_d.mean is None and rows[0].cs is None and mean.cs_std is None
