"""The console's layout and forms in chromium: the compose view around a large frame at
1280x800 and narrower, the learning options as fields kept in step with their JSON, and the
file fields as labelled buttons with the chosen file's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.browser.conftest import SIDE
from tests.browser.test_console import wait_until

pytestmark = pytest.mark.slow


def chosen(page: Any, selector: str) -> str:
    """The file name shown for the file input `selector` (the text it is described by)."""
    return page.locator(selector).evaluate(
        "e => document.getElementById(e.getAttribute('aria-describedby')).textContent"
    )


def test_file_fields_are_labelled_buttons_with_the_file_name(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    scene, masks = scene_files
    page.goto(open_service + "/console/")
    image = page.get_by_label("Image (PNG, JPEG or WebP)", exact=True)
    mask = page.get_by_label("Mask file for instance 1", exact=True)
    # Nothing chosen yet: said in full, beside a button that says what it does.
    assert chosen(page, "#image-input") == "no file chosen"
    assert mask.evaluate("e => e.type") == "file"
    assert chosen(page, f"#{mask.get_attribute('id')}") == "no file chosen"
    buttons = page.locator(".file-button")
    assert [b.inner_text() for b in buttons.all()] == ["Choose image…", "Choose mask file…"]
    for name in page.locator(".file-name").all():
        assert name.is_visible() and name.inner_text() == "no file chosen"
    # Named by the field's label, described by the file name: what a screen reader says.
    tree = page.locator('[data-field="image"]').aria_snapshot()
    assert 'button "Image (PNG, JPEG or WebP)"' in tree, tree
    # The button opens the file chooser; the chosen file's name is shown whole.
    with page.expect_file_chooser() as chooser:
        buttons.first.click()
    chooser.value.set_files(str(scene))
    page.locator("#paint-canvas").wait_for()
    assert chosen(page, "#image-input") == scene.name
    # A mask file with a long name: shown in full, wrapped rather than cut.
    long_name = tmp_path / ("mask-of-the-red-block-on-the-left-of-the-scene-" * 2 + "1.png")
    long_name.write_bytes(masks[0].read_bytes())
    mask.set_input_files(str(long_name))
    wait_until(page, "document.querySelector('.instance .coverage').textContent.includes('%')")
    shown = page.locator(".instance .file-name").first
    assert shown.inner_text() == long_name.name
    assert shown.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    # A refused mask (another size than the image's) is not kept: "no file chosen" again.
    Image.new("L", (SIDE // 2, SIDE // 2), 255).save(tmp_path / "small.png")
    mask.set_input_files(str(tmp_path / "small.png"))
    page.locator('[data-field="masks[0]"] .problem').filter(has_text="128 x 128").wait_for()
    assert shown.inner_text() == "no file chosen"
    # An image the browser cannot read leaves the one in use, and its name.
    (tmp_path / "broken.png").write_bytes(b"not an image")
    image.set_input_files(str(tmp_path / "broken.png"))
    page.locator('[data-field="image"] .problem').filter(has_text="not an image").wait_for()
    assert chosen(page, "#image-input") == scene.name
    # By keyboard: the input takes the focus, and its button shows it.
    image.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "image-input"
    outline = buttons.first.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline == "solid", outline
