"""The console's layout and forms in chromium: the compose view around a large frame at
1280x800 and narrower, the learning options as fields kept in step with their JSON, and the
file fields as labelled buttons with the chosen file's name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.browser.conftest import INSTANCES, SIDE
from tests.browser.test_console import drag, wait_until
from tests.helpers.wait import wait_until as wait

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


NAMES = list(INSTANCES)
QUICK = {"phase1_steps": 4, "phase2_steps": 2, "reward_steps": 1, "diagnostic_timesteps": [100]}


def read_json(page: Any, path: str) -> Any:
    """GET an API path as the console would, from the page's own origin."""
    answer = page.request.get(path)
    assert answer.ok, answer.text()
    return answer.json()


def test_learning_options_as_fields_in_step_with_their_json(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]]
) -> None:
    scene, masks = scene_files
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(open_service + "/console/")
    preset = page.get_by_label("Preset")
    phase1 = page.get_by_label("Phase 1 steps")
    phase2 = page.get_by_label("Phase 2 steps")
    adaptation = page.get_by_label("Adaptation (phase 2)")
    seed = page.get_by_label("Seed", exact=True)
    text = page.get_by_label("Options (JSON object of LearnConfig fields)")

    def fields() -> tuple[str, ...]:
        return tuple(c.input_value() for c in (preset, phase1, phase2, adaptation, seed))

    def sent() -> Any:
        return json.loads(text.input_value())

    # The quick preset: its values in the fields; the JSON folded under "Advanced".
    assert fields() == ("quick", "4", "2", "lora", "")
    assert sent() == QUICK and not text.is_visible()
    assert [c.get_attribute("placeholder") for c in (phase1, phase2, seed)] == ["800", "400", "0"]
    # A field edited rewrites the JSON; the preset becomes "custom".
    phase1.fill("6")
    seed.fill("7")
    adaptation.select_option("none")
    assert sent() == QUICK | {"phase1_steps": 6, "seed": 7, "phase2": False}
    assert preset.input_value() == "custom"
    adaptation.select_option("full")
    seed.fill("")  # emptied: left out, the default applies
    assert sent() == QUICK | {"phase1_steps": 6, "phase2_mode": "full"}
    # The JSON edited fills the fields; JSON equal to a preset selects it.
    page.get_by_text("Advanced: every option as JSON").click()
    text.fill('{"phase1_steps": 3, "phase2_steps": 1, "phase2": false, "seed": 11}')
    assert fields() == ("custom", "3", "1", "none", "11")
    text.fill("{}")
    assert fields() == ("paper", "", "", "lora", "")
    preset.select_option("quick")
    assert sent() == QUICK and fields() == ("quick", "4", "2", "lora", "")
    # JSON that does not read: said at the field, the fields wait for it, nothing is sent.
    text.fill('{"phase1_steps": 3,')
    problem = page.locator('[data-field="options"] .problem')
    assert "Options are not a JSON object" in problem.inner_text(), problem.inner_text()
    assert "Fix:" in problem.inner_text() and text.get_attribute("aria-invalid") == "true"
    assert phase1.is_disabled() and adaptation.is_disabled() and not preset.is_disabled()
    page.set_input_files("#image-input", str(scene))
    page.get_by_label("Mask file for instance 1").set_input_files(str(masks[0]))
    wait_until(page, "document.querySelector('.instance .coverage').textContent.includes('%')")
    page.get_by_text("Advanced: every option as JSON").click()  # folded: the refusal unfolds it
    assert not text.is_visible()
    page.get_by_role("button", name="Start learning").click()
    assert "Options are not a JSON object" in problem.inner_text()
    assert text.is_visible() and text.evaluate("e => e === document.activeElement")
    assert posts == []
    # Mended, then a field set: the request carries what was chosen.
    text.fill(json.dumps(QUICK | {"phase2_steps": 1, "phase2": False}))
    assert problem.inner_text() == "" and text.get_attribute("aria-invalid") is None
    assert not phase1.is_disabled() and adaptation.input_value() == "none"
    # The API's refusal of a field's value is said beside that field.
    phase1.fill("-1")
    page.get_by_role("button", name="Start learning").click()
    refused = page.locator('[data-field="options.phase1_steps"] .problem')
    refused.filter(has_text="phase1_steps").wait_for()
    assert phase1.evaluate("e => e === document.activeElement")
    assert page.locator("[aria-invalid=true]").count() == 1
    phase1.fill("4")
    seed.fill("5")
    chosen = QUICK | {"phase2_steps": 1, "phase2": False, "seed": 5}
    assert sent() == chosen
    page.get_by_role("button", name="Start learning").click()
    page.wait_for_url(re.compile(r"#/concepts/[0-9a-f-]{36}$"))
    concept = read_json(page, f"{open_service}/v1/concepts/{page.url.rsplit('/', 1)[1]}")
    assert concept["options"] == chosen
    job = read_json(page, f"{open_service}/v1/jobs/{concept['learn_job_id']}")
    assert job["request"]["options"] == chosen


def ready_concept(base: str, scene: Path, masks: list[Path]) -> str:
    """A concept learnt with the quick options through the API; its id once it is ready."""
    files = [("image", (scene.name, scene.read_bytes(), "image/png"))]
    files += [("masks", (m.name, m.read_bytes(), "image/png")) for m in masks]
    form = {"names": ",".join(INSTANCES), "options": json.dumps(QUICK)}
    made = httpx.post(f"{base}/v1/concepts", files=files, data=form, timeout=30).json()
    cid = made["concept"]["id"]

    def ready() -> bool:
        status = httpx.get(f"{base}/v1/concepts/{cid}", timeout=30).json()["status"]
        assert status in ("pending", "learning", "ready"), status
        return status == "ready"

    wait(ready, timeout=120, message="the concept did not become ready", interval=0.5)
    return cid


def inside(box: dict[str, float], width: int, height: int) -> bool:
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= width
        and (box["y"] + box["height"] <= height)
    )


def drawn_box(page: Any, token: str) -> list[float]:
    fields = page.locator(f'[data-token="{token}"] input')
    return [float(fields.nth(k).input_value()) for k in range(4)]


def near(got: list[float], want: list[float], tolerance: float = 0.015) -> bool:
    return all(abs(g - w) < tolerance for g, w in zip(got, want, strict=True))


def test_compose_around_a_large_frame_at_1280x800_and_narrower(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]]
) -> None:
    cid = ready_concept(open_service, *scene_files)
    page.goto(f"{open_service}/console/#/concepts/{cid}")
    canvas = page.locator("#box-canvas")
    canvas.wait_for()
    # No synthesis yet: the attention maps are open, in the column beside the composer.
    page.locator("#attention .map-card img").nth(2).wait_for()
    assert page.locator("#attention").evaluate("d => d.open")
    # 1280x800: a frame of 512 px or more, the Synthesise button and the frame on screen.
    frame = canvas.bounding_box()
    assert frame["width"] >= 512 and abs(frame["width"] - frame["height"]) < 1, frame
    assert inside(frame, 1280, 800), frame
    synthesise = page.get_by_role("button", name="Synthesise")
    assert inside(synthesise.bounding_box(), 1280, 800), synthesise.bounding_box()
    assert page.evaluate("scrollY") == 0
    # The box fields and options sit beside the frame, the maps and results to its right.
    panel = page.locator(".compose-panel").bounding_box()
    assert panel["x"] + panel["width"] <= frame["x"]
    assert page.locator("#attention").bounding_box()["x"] >= frame["x"] + frame["width"]
    # Boxes are drawn and dragged on the frame; the number fields follow.
    drag(page, "#box-canvas", [(0.1, 0.2), (0.4, 0.6)])
    assert near(drawn_box(page, "<asset0>"), [0.1, 0.2, 0.4, 0.6]), drawn_box(page, "<asset0>")
    page.get_by_label(f"<asset1> {NAMES[1]}", exact=True).check()
    drag(page, "#box-canvas", [(0.55, 0.3), (0.9, 0.8)])
    drag(page, "#box-canvas", [(0.7, 0.5), (0.65, 0.45)])  # moved by its inside
    assert near(drawn_box(page, "<asset1>"), [0.5, 0.25, 0.85, 0.75]), drawn_box(page, "<asset1>")
    assert near(drawn_box(page, "<asset0>"), [0.1, 0.2, 0.4, 0.6])
    # A synthesis sent: the maps fold away (seen), its result comes in beside the frame.
    page.get_by_label("Prompt", exact=True).fill("a photo of <asset0> and <asset1>")
    page.get_by_label("Steps", exact=True).fill("2")
    synthesise.click()
    page.locator(".gallery .stack img").first.wait_for()
    assert not page.locator("#attention").evaluate("d => d.open")
    assert page.locator("#attention .leak-note").count() == 1
    results = page.locator("#results").bounding_box()
    assert results["x"] >= frame["x"] + frame["width"] and results["y"] < 800
    # Later visits start with the maps folded; their summary opens them.
    page.reload()
    page.locator(".gallery .stack img").first.wait_for()
    assert not page.locator("#attention").evaluate("d => d.open")
    page.locator("#attention summary").click()
    assert page.locator("#attention .map-card").first.is_visible()
    page.locator("#attention summary").click()
    drag(page, "#box-canvas", [(0.1, 0.2), (0.4, 0.6)])  # a page read afresh has no boxes
    # Wider and narrower windows: the frame scales with the window and still works.
    widths = {}
    for width, height in [(1600, 1000), (1280, 800), (900, 700), (390, 844)]:
        page.set_viewport_size({"width": width, "height": height})
        page.evaluate("scrollTo(0, 0)")
        frame = canvas.bounding_box()
        widths[width] = frame["width"]
        assert frame["width"] > 200 and frame["x"] + frame["width"] <= width, (width, frame)
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), width
        if width >= 900:
            assert inside(synthesise.bounding_box(), width, height), (width, height)
        # Drag the red block's box by its inside: the fields follow at this size too.
        before = drawn_box(page, "<asset0>")
        drag(page, "#box-canvas", [(0.25, 0.4), (0.3, 0.45)])
        moved = [v + 0.05 for v in before]
        assert near(drawn_box(page, "<asset0>"), moved), (width, drawn_box(page, "<asset0>"))
        drag(page, "#box-canvas", [(0.3, 0.45), (0.25, 0.4)])
        assert near(drawn_box(page, "<asset0>"), before), (width, drawn_box(page, "<asset0>"))
    assert widths[1600] > widths[1280] > widths[900] > widths[390], widths
