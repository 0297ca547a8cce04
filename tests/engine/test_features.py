"""The feature models: the tiny built-ins, a local folder, the hub cache, and refusals."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mifo_engine.errors import ConfigError, ModelLoadError
from mifo_engine.features import FeatureModels, build_tiny_clip, build_tiny_dino, feature_models

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40 + 8 * k, 48, 3), dtype=np.uint8)) for k in range(3)
    ]


@pytest.fixture(scope="module")
def tiny() -> FeatureModels:
    return FeatureModels("tiny", "tiny")


def test_tiny_embeddings_are_normalised_and_deterministic(tiny: FeatureModels) -> None:
    images = _images()
    text = tiny.text(["a photo of a toy", "a photo of a toy at the beach"])
    clip, dino = tiny.clip_images(images), tiny.dino_images(images)
    assert text.shape == (2, 16) and clip.shape == (3, 16) and dino.shape == (3, 32)
    for rows in (text, clip, dino):
        assert np.allclose(np.linalg.norm(rows, axis=1), 1.0)
    again = FeatureModels("tiny", "tiny")
    assert np.array_equal(again.dino_images(images), dino)
    assert np.array_equal(again.text(["a photo of a toy", "a photo of a toy at the beach"]), text)
    # padding to the batch's longest text moves a value by a rounding error only
    assert np.allclose(again.text(["a photo of a toy"])[0], text[0], atol=1e-6)
    assert not np.allclose(dino[0], dino[1])


def test_tiny_provenance_names_no_revision(tiny: FeatureModels) -> None:
    assert tiny.provenance() == {
        "clip": {"spec": "tiny", "id": "tiny", "revision": None},
        "dino": {"spec": "tiny", "id": "tiny", "revision": None},
    }


def _save_tiny(root: Path) -> tuple[Path, Path]:
    clip, tokenizer, clip_processor = build_tiny_clip()
    dino, dino_processor = build_tiny_dino()
    for folder, parts in (
        (root / "clip", (clip, tokenizer, clip_processor)),
        (root / "dino", (dino, dino_processor)),
    ):
        for part in parts:
            part.save_pretrained(folder)
    return root / "clip", root / "dino"


def test_a_local_folder_loads_what_save_pretrained_wrote(
    tmp_path: Path, tiny: FeatureModels
) -> None:
    clip, dino = _save_tiny(tmp_path)
    local = FeatureModels(str(clip), str(dino))
    images = _images()
    assert np.allclose(local.dino_images(images), tiny.dino_images(images), atol=1e-6)
    assert np.allclose(local.clip_images(images), tiny.clip_images(images), atol=1e-6)
    assert np.allclose(local.text(["a toy"]), tiny.text(["a toy"]), atol=1e-6)
    assert local.provenance()["dino"] == {"spec": str(dino), "id": str(dino), "revision": None}


def test_a_pinned_hub_id_is_served_from_the_cache_without_the_network(tmp_path: Path) -> None:
    clip, dino = _save_tiny(tmp_path / "saved")
    cache = tmp_path / "cache"
    for name, folder in (("clip", clip), ("dino", dino)):
        snapshot = cache / f"models--someone--tiny-{name}" / "snapshots" / COMMIT
        snapshot.parent.mkdir(parents=True)
        folder.rename(snapshot)
    models = FeatureModels(
        f"someone/tiny-clip@{COMMIT}",
        f"someone/tiny-dino@{COMMIT}",
        local_files_only=True,
        cache_dir=str(cache),
    )
    assert models.dino_images(_images()[:1]).shape == (1, 32)
    assert models.provenance()["clip"] == {
        "spec": f"someone/tiny-clip@{COMMIT}",
        "id": "someone/tiny-clip",
        "revision": COMMIT,
    }


def test_an_uncached_hub_id_with_downloads_off_names_the_field(tmp_path: Path) -> None:
    models = FeatureModels(
        "tiny", f"someone/absent@{COMMIT}", local_files_only=True, cache_dir=str(tmp_path)
    )
    with pytest.raises(ModelLoadError) as caught:
        models.dino_images(_images()[:1])
    assert caught.value.field == "dino_model" and "not in the local cache" in str(caught.value)


@pytest.mark.parametrize("spec", ["someone/unpinned", "no-such-folder"])
def test_an_unpinned_hub_id_or_a_missing_folder_is_refused(spec: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        FeatureModels(spec, "tiny").text(["a toy"])
    assert caught.value.field == "clip_model" and "pinned to a commit" in str(caught.value)


def test_a_branch_revision_is_refused_before_anything_loads() -> None:
    with pytest.raises(ConfigError) as caught:
        FeatureModels("tiny", "facebook/dino-vits16@main")
    assert caught.value.field == "dino_model"


def test_a_broken_folder_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as caught:
        FeatureModels("tiny", str(tmp_path)).dino_images(_images()[:1])
    assert caught.value.field == "dino_model" and str(tmp_path) in str(caught.value)


def test_feature_models_keeps_the_last_set_it_was_asked_for() -> None:
    first = feature_models("tiny", "tiny")
    assert feature_models("tiny", "tiny") is first
    other = feature_models("tiny", "tiny", device="cpu", local_files_only=True)
    assert other is not first and feature_models("tiny", "tiny") is not first


def test_a_models_folder_is_found_without_loading_it(tmp_path: Path) -> None:
    """What a deployment's fetch step calls: a cached snapshot's folder, `tiny` built in."""
    from mifo_engine.features import feature_model_folder

    clip, _ = _save_tiny(tmp_path / "saved")
    snapshot = tmp_path / "cache" / "models--someone--tiny-clip" / "snapshots" / COMMIT
    snapshot.parent.mkdir(parents=True)
    clip.rename(snapshot)
    spec = f"someone/tiny-clip@{COMMIT}"
    folder, source = feature_model_folder(
        spec, "clip_model", local_files_only=True, cache_dir=tmp_path / "cache"
    )
    assert folder == snapshot and (source.model_id, source.revision) == (
        "someone/tiny-clip",
        COMMIT,
    )
    assert feature_model_folder("tiny", "dino_model")[0] is None
    with pytest.raises(ModelLoadError) as caught:
        feature_model_folder(f"someone/absent@{COMMIT}", "dino_model", local_files_only=True)
    assert caught.value.field == "dino_model"
    with pytest.raises(ConfigError):
        feature_model_folder("someone/tiny-clip@main", "clip_model")
