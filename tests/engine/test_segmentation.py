"""Masks from clicks and automatic proposals: the tiny SAM end to end, the embedding cache,
and the geometry checked with a decoder that answers by rule."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mifo_engine.config import LearnConfig
from mifo_engine.errors import EmptyMask, InputError, ModelLoadError
from mifo_engine.inputs import check_inputs
from mifo_engine.maskpost import mask_image, mask_iou
from mifo_engine.sam import IMAGENET_MEAN, IMAGENET_STD, LoadedSam
from mifo_engine.segmentation import Segmenter, grid_points, image_key, load_segmenter
from mifo_engine.segprompts import SegmentConfig
from tests.helpers.images import make_scene

WIDTH, HEIGHT = 96, 80
POINT = {"points": [[30, 40]], "labels": [1]}
BOX = {"box": [50, 10, 90, 70]}
# Proposal filters loose enough for a random model (its predicted IoUs and stabilities are noise)
LOOSE = SegmentConfig(
    points_per_side=8, min_predicted_iou=0.0, min_stability=0.5, stability_offset=0.1
)


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return make_scene(WIDTH, HEIGHT, n=2, seed=0)[0]


@pytest.fixture
def tiny() -> Segmenter:
    return load_segmenter("tiny")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- the tiny model end to end


def test_one_instance_by_points(tiny, scene) -> None:
    result = tiny.segment(scene, [POINT])
    (instance,) = result.instances
    assert result.size == (WIDTH, HEIGHT)
    assert instance.mask.shape == (HEIGHT, WIDTH) and instance.mask.dtype == bool
    assert len(instance.scores) == 3  # SAM's three multimask outputs
    assert instance.score == max(instance.scores) == instance.scores[instance.choice]
    assert 0 < instance.area < WIDTH * HEIGHT


def test_one_instance_by_box_and_two_instances_in_order(tiny, scene) -> None:
    (by_box,) = tiny.segment(scene, [BOX]).instances
    both = tiny.segment(scene, [POINT, BOX]).instances
    assert (both[1].mask == by_box.mask).all() and both[1].scores == by_box.scores
    assert not (both[0].mask == both[1].mask).all()


def test_masks_are_mode_l_0_255_at_the_image_size(tiny, scene, tmp_path) -> None:
    result = tiny.segment(scene, [POINT, BOX])
    for image in result.masks():
        assert image.mode == "L" and image.size == (WIDTH, HEIGHT)
        assert set(np.unique(np.asarray(image)).tolist()) <= {0, 255}
    paths = result.save(tmp_path)
    assert [p.name for p in paths] == ["mask_00.png", "mask_01.png"]
    assert (np.asarray(Image.open(paths[1])) == result.masks()[1]).all()


def test_results_are_deterministic(scene) -> None:
    first = load_segmenter("tiny").segment(scene, [POINT, BOX])
    second = load_segmenter("tiny").segment(scene, [POINT, BOX])
    for a, b in zip(first.instances, second.instances, strict=True):
        assert (a.mask == b.mask).all() and a.scores == b.scores


def test_the_second_click_reuses_the_embedding(tiny, scene) -> None:
    first = tiny.segment(scene, [POINT])
    again = tiny.segment(_png(scene), [POINT, BOX])  # the same pixels, as a file's bytes
    assert not first.embedding_reused and first.embed_s > 0
    assert again.embedding_reused and again.embed_s == 0.0
    assert (again.instances[0].mask == first.instances[0].mask).all()
    assert (tiny.hits, tiny.misses) == (1, 1)
    other = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert not tiny.segment(other, [POINT]).embedding_reused


def test_an_embedding_is_reused_only_within_its_scope(tiny, scene) -> None:
    assert not tiny.segment(scene, [POINT], scope="image-a").embedding_reused
    assert tiny.segment(scene, [POINT], scope="image-a").embedding_reused
    assert not tiny.segment(scene, [POINT], scope="image-b").embedding_reused  # same pixels
    assert not tiny.propose(scene, scope="image-c").embedding_reused
    assert tiny.propose(scene, scope="image-b").embedding_reused


def test_the_cache_keeps_the_most_recent_images(scene) -> None:
    segmenter = load_segmenter("tiny", config=SegmentConfig(embedding_cache_size=2))
    images = [scene.rotate(angle) for angle in (0, 90, 180)]
    for image in images:
        segmenter.embed(image)
    assert [segmenter.cached(i) for i in images] == [False, True, True]
    segmenter.embed(images[1])  # used again: now the most recent
    segmenter.embed(images[0])
    assert [segmenter.cached(i) for i in images] == [True, True, False]
    segmenter.clear_cache()
    assert not any(segmenter.cached(i) for i in images)


def test_a_spec_loads_on_first_use_and_a_refused_request_loads_nothing(scene) -> None:
    lazy = Segmenter("tiny")
    assert not lazy.loaded and lazy.spec == "tiny"
    with pytest.raises(InputError):
        lazy.segment(scene, [{"box": [10, 10, 5, 20]}])
    assert not lazy.loaded
    result = lazy.segment(scene, [POINT])
    assert lazy.loaded and lazy.sam.model_id == "tiny"
    assert (
        result.instances[0].mask == load_segmenter("tiny").segment(scene, [POINT]).instances[0].mask
    ).all()
    missing = Segmenter("./no/such/sam")
    with pytest.raises(ModelLoadError) as err:
        missing.segment(scene, [POINT])
    assert err.value.field == "segment_model"


def test_the_image_key_is_its_pixels() -> None:
    a = Image.new("RGB", (4, 3), (1, 2, 3))
    assert image_key(a) == image_key(a.copy()) != image_key(Image.new("RGB", (3, 4), (1, 2, 3)))


def test_a_bad_prompt_is_refused_before_the_embedding_is_computed(tiny, scene) -> None:
    with pytest.raises(InputError) as err:
        tiny.segment(scene, [POINT, {"points": [[WIDTH, 10]]}])
    assert err.value.field == "prompts[1].points[0]"
    assert not tiny.cached(scene)
    with pytest.raises(InputError) as err:
        tiny.segment(scene, [{"points": [[5, 5]], "labels": [1, 1]}])
    assert err.value.field == "prompts[0].labels"
    limited = SegmentConfig(max_instances=1)
    with pytest.raises(InputError) as err:
        tiny.segment(scene, [POINT, BOX], config=limited)
    assert err.value.field == "prompts"


def test_the_tiny_model_masks_feed_the_learning_input_checks(tiny, scene, tmp_path) -> None:
    """The saved files pass `mifo learn`'s checks as two instances (the random model's two
    masks happen to be non-empty and distinct enough); an empty one meets its usual error."""
    result = tiny.segment(scene, [POINT, BOX])
    paths = result.save(tmp_path)
    shares = check_inputs(scene, paths, resolution=64, config=LearnConfig())
    assert len(shares) == 2 and all(0 < s < 1 for s in shares)
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    with pytest.raises(EmptyMask) as err:
        check_inputs(scene, [paths[0], mask_image(empty)], resolution=64, config=LearnConfig())
    assert err.value.field == "masks[1]"


def test_proposals_of_the_tiny_model_are_ranked_and_distinct(tiny, scene) -> None:
    found = tiny.propose(scene, config=LOOSE)
    assert found.points == 64 and 1 < len(found.candidates) <= found.passed <= 64
    scores = [c.score for c in found.candidates]
    assert scores == sorted(scores, reverse=True)
    for c in found.candidates:
        assert c.mask.shape == (HEIGHT, WIDTH) and c.area > 0 and c.stability >= 0.5
        x0, y0, x1, y1 = c.box
        assert c.mask[y0:y1, x0:x1].sum() == c.area
    fewer = tiny.propose(scene, config=LOOSE.replace(max_proposals=2, dedupe_iou=0.3))
    assert fewer.embedding_reused and len(fewer.candidates) == 2


def test_default_filters_hold_back_a_random_models_noise(tiny, scene) -> None:
    found = tiny.propose(scene, config=SegmentConfig(points_per_side=4))
    assert found.points == 16 and found.passed == len(found.candidates) == 0


# --- geometry, with a decoder that answers by rule


class RuleSam(torch.nn.Module):
    """Answers like SAM's decoder but by rule, in the encoder's square (64 px, 32 px logits).

    A point prompt gives discs of radius 4, 8 and 64 px around the first point, predicted
    IoUs 0.5, 0.9 and 0.1 (so the 8 px disc is chosen); a box gives the box three times; with
    `quadrants`, a point gives the quadrant of the square it lies in, scored by quadrant.
    """

    LOW = 32

    def __init__(self, quadrants: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.quadrants = quadrants
        centres = (torch.arange(self.LOW) + 0.5) * 64 / self.LOW
        self.ys, self.xs = torch.meshgrid(centres, centres, indexing="ij")
        self.config = SimpleNamespace(vision_config=SimpleNamespace(image_size=64))

    def get_image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, 4, 8, 8)

    def forward(self, *, input_points=None, input_labels=None, input_boxes=None, **_):
        masks, scores = [], []
        prompts = input_points[0] if input_points is not None else input_boxes[0]
        for prompt in prompts:
            m, s = self._box(prompt) if input_points is None else self._point(prompt[0] + 0.5)
            masks.append(m)
            scores.append(s)
        return SimpleNamespace(
            pred_masks=torch.stack(masks)[None], iou_scores=torch.stack(scores)[None]
        )

    def _point(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.quadrants:
            right, low = bool(p[0] >= 32), bool(p[1] >= 32)
            inside = ((self.xs >= 32) == right) & ((self.ys >= 32) == low)
            score = 0.9 - 0.1 * (2 * low + right) - 0.0001 * float(p[0] + p[1])
            return torch.stack([torch.where(inside, 4.0, -4.0)] * 3), torch.tensor([score, 0, 0])
        d = ((self.xs - p[0]) ** 2 + (self.ys - p[1]) ** 2).sqrt()
        return torch.stack([4.0 - d, 8.0 - d, 64.0 - d]), torch.tensor([0.5, 0.9, 0.1])

    def _box(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, y0, x1, y1 = b.tolist()
        inside = (self.xs >= x0) & (self.xs <= x1) & (self.ys >= y0) & (self.ys <= y1)
        return torch.stack([torch.where(inside, 4.0, -4.0)] * 3), torch.tensor([0.2, 0.3, 0.1])


def _rule_segmenter(quadrants: bool = False, config: SegmentConfig | None = None) -> Segmenter:
    sam = LoadedSam(
        spec="rule",
        model_id="rule",
        revision=None,
        weights_hash="-",
        model=RuleSam(quadrants),  # type: ignore[arg-type]
        device=torch.device("cpu"),
        input_size=64,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return Segmenter(sam, config)


def test_a_click_gives_a_mask_around_it_at_the_image_size(scene) -> None:
    """96x80 image, 64 px square: 1.5 image px per square px, so the chosen 8 px disc is a
    disc of radius 12 around the click in the image."""
    (instance,) = _rule_segmenter().segment(scene, [{"points": [[30, 40]]}]).instances
    assert instance.choice == 1 and instance.score == pytest.approx(0.9)
    ys, xs = np.nonzero(instance.mask)
    assert instance.mask[40, 30]
    assert abs(xs.mean() - 30.5) < 1 and abs(ys.mean() - 40.5) < 1
    assert instance.area == pytest.approx(np.pi * 12**2, rel=0.1)


def test_a_box_gives_the_box(scene) -> None:
    (instance,) = _rule_segmenter().segment(scene, [{"box": [48, 12, 90, 66]}]).instances
    ys, xs = np.nonzero(instance.mask)
    assert abs(xs.min() - 48) <= 2 and abs(xs.max() - 90) <= 2
    assert abs(ys.min() - 12) <= 2 and abs(ys.max() - 66) <= 2


def test_proposals_are_deduplicated_and_ranked(scene) -> None:
    """16 grid points, 4 in each quadrant of the square: one proposal per quadrant, best first."""
    config = SegmentConfig(points_per_side=4, min_predicted_iou=0.5, min_stability=0.9)
    found = _rule_segmenter(quadrants=True).propose(scene, config=config)
    assert found.points == 16 and found.passed == 16 and len(found.candidates) == 4
    assert [round(c.score, 1) for c in found.candidates] == [0.9, 0.8, 0.7, 0.6]
    masks = torch.from_numpy(np.stack([c.mask for c in found.candidates]))
    overlap = mask_iou(masks, masks) - torch.eye(4)
    assert float(overlap.max()) < 0.1
    # the best of the top-left quadrant's four points is the one nearest the top-left corner
    assert found.candidates[0].point == (12.0, 10.0)
    # the square's top half holds the image's rows 0-47 (32 of 53.3 scaled rows)
    assert found.candidates[0].box == (0, 0, 48, 48) and found.candidates[3].box[2:] == (96, 80)


def test_two_rule_masks_are_two_valid_learning_instances(scene) -> None:
    result = _rule_segmenter().segment(scene, [{"points": [[30, 40]]}, {"box": [56, 20, 90, 66]}])
    shares = check_inputs(scene, result.masks(), resolution=64, config=LearnConfig())
    assert len(shares) == 2 and all(s > 0.03 for s in shares)


def test_grid_points_are_cell_centres_row_by_row() -> None:
    grid = grid_points((40, 20), 2)
    assert grid.tolist() == [[10.0, 5.0], [30.0, 5.0], [10.0, 15.0], [30.0, 15.0]]
