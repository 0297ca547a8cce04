"""A real `mifo serve --base-model tiny` per test module (tests/helpers/serve.py), and a scene
with its masks as files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.serve import serve


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("service")) as base:
        yield base


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A scene and its two masks as files."""
    from tests.helpers.images import encode, make_scene

    folder = tmp_path_factory.mktemp("scene")
    image, masks = make_scene()
    (folder / "scene.png").write_bytes(encode(image))
    paths = []
    for i, mask in enumerate(masks):
        paths.append(folder / f"mask{i}.png")
        paths[-1].write_bytes(encode(mask))
    return folder / "scene.png", paths
