"""The console's own checks and page behaviour in chromium: masks as the engine reads them,
the fill, refusals before a request, one concept per submit, focus kept and moved, followers
that stop when the page is left or the key prompt is canceled."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.browser.conftest import INSTANCES, SIDE
from tests.browser.test_console import JOB_URL, coverage, drag, paint_instance, wait_until

pytestmark = pytest.mark.slow
BOX = INSTANCES["red block"]
AREA = (BOX[2] - BOX[0]) * (BOX[3] - BOX[1])


def mask_file(folder: Path, name: str, mode: str, size: tuple[int, int] = (SIDE, SIDE)) -> Path:
    """The red block's mask: white on black (opaque), or black on transparent (alpha only)."""
    corners = [round(v * s) for v, s in zip(BOX, size * 2, strict=True)]
    if mode == "alpha":
        image = Image.new("RGBA", size, (0, 0, 0, 0))
        ImageDraw.Draw(image).rectangle(corners, fill=(0, 0, 0, 255))
    else:
        image = Image.new("L", size, 0)
        ImageDraw.Draw(image).rectangle(corners, fill=255)
    image.save(folder / name)
    return folder / name


def test_masks_fill_and_local_refusals(
    page: Any,
    open_service: str,
    scene_files: tuple[Path, list[Path]],
    tmp_path: Path,
) -> None:
    icons: list[str] = []
    page.on("request", lambda r: icons.append(r.url) if "favicon" in r.url else None)
    page.goto(open_service + "/console/")
    page.set_input_files("#image-input", str(scene_files[0]))
    upload = page.get_by_label("Mask file for instance 1")
    # Black on transparent: the alpha is the mask, as the engine reads it.
    upload.set_input_files(str(mask_file(tmp_path, "alpha.png", "alpha")))
    wait_until(page, "document.querySelector('.instance .coverage').textContent.includes('%')")
    assert 0.9 * AREA < coverage(page, 0) < 1.1 * AREA
    # Another size than the image's is refused, naming both.
    upload.set_input_files(str(mask_file(tmp_path, "small.png", "opaque", (128, 96))))
    problem = page.locator('[data-field="masks[0]"] .problem')
    problem.filter(has_text="128 x 96").wait_for()
    assert f"{SIDE} x {SIDE}" in problem.inner_text() and "Fix:" in problem.inner_text()
    assert 0.9 * AREA < coverage(page, 0) < 1.1 * AREA  # the mask it had stays
    # The fill fills: a second click inside the painted region changes nothing.
    page.get_by_role("button", name="Add instance").click()
    paint_instance(page, INSTANCES["orange block"])
    painted = coverage(page, 1)
    assert painted > 0.5 * AREA
    x0, y0, x1, y1 = INSTANCES["orange block"]
    drag(page, "#paint-canvas", [((x0 + x1) / 2, (y0 + y1) / 2)])
    assert coverage(page, 1) == painted
    # An unnamed instance is refused in the page, and its field gets the focus.
    page.get_by_label("Name of instance 2").fill("")
    page.get_by_role("button", name="Start learning").click()
    assert "has no name" in page.locator('[data-field="masks[1]"] .problem').inner_text()
    assert page.evaluate("document.activeElement.getAttribute('aria-invalid')") == "true"
    assert icons == []  # the icon is inline: no request, no 404
    # A wide image: the engine keeps its centred square, so the sides are shaded.
    Image.new("RGB", (320, 160), (128, 128, 128)).save(tmp_path / "wide.png")
    page.set_input_files("#image-input", str(tmp_path / "wide.png"))
    pixel = "([x, y]) => document.querySelector('#paint-canvas').getContext('2d').getImageData(x, y, 1, 1).data[0]"
    wait_until(page, "document.querySelector('#paint-canvas').width === 320")
    assert page.evaluate(pixel, [160, 80]) == 128
    assert page.evaluate(pixel, [20, 80]) < 80 and page.evaluate(pixel, [300, 80]) < 80


def test_one_concept_per_submit_then_focus_and_followers(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]]
) -> None:
    scene, masks = scene_files
    posts: list[str] = []
    page.on(
        "request",
        lambda r: (
            posts.append(r.url) if r.method == "POST" and r.url.endswith("/v1/concepts") else None
        ),
    )
    page.goto(open_service + "/console/")
    page.set_input_files("#image-input", str(scene))
    page.get_by_label("Mask file for instance 1").set_input_files(str(masks[0]))
    wait_until(page, "document.querySelector('.instance .coverage').textContent.includes('%')")
    page.get_by_label("Preset").select_option("paper")  # long: still running below
    page.evaluate(
        "() => { const f = document.querySelector('#new-form'); f.requestSubmit(); f.requestSubmit(); }"
    )
    page.wait_for_url(re.compile(r"#/concepts/[0-9a-f-]{36}$"))
    assert len(posts) == 1, posts
    # The route change moved the focus to the view's heading.
    page.locator("#concept-title").filter(has_text="Concept: ").wait_for()
    assert page.evaluate("document.activeElement.id") == "concept-title"
    # The cancel button keeps the focus while the job's progress changes under it.
    status = page.locator("#learning .status-line")
    status.filter(has_text=re.compile(r"step \d+ of 800")).wait_for()
    page.locator("#learning button.cancel").focus()
    first = status.inner_text()
    wait_until(
        page,
        f"document.querySelector('#learning .status-line').textContent !== {json.dumps(first)}",
    )
    assert page.evaluate("document.activeElement.classList.contains('cancel')")
    # Leaving before the learning job's read answers: no stream is opened after leaving.
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)

    held: list[Any] = []
    page.route(JOB_URL, lambda route: held.append(route))  # answered once released
    page.reload()
    page.locator("#concept-title").filter(has_text="Concept: ").wait_for()
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the concept page did not read its learning job"
    streams.clear()
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.locator("#job-rows").wait_for()
    for route in held:
        route.continue_()
    page.unroute(JOB_URL)
    page.wait_for_timeout(2500)
    assert streams == []
    # The jobs list reads itself again every 2 s: its cancel button keeps the focus.
    page.get_by_label("Status").select_option("running")
    button = page.get_by_role("button", name=re.compile("^Cancel job "))
    button.focus()
    page.wait_for_timeout(4500)
    assert page.evaluate("document.activeElement.textContent").startswith("Cancel job ")
    page.keyboard.press("Enter")
    page.locator("#job-rows td.hint").wait_for()


def test_partial_box_is_refused_in_the_page(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]]
) -> None:
    scene, masks = scene_files
    page.goto(open_service + "/console/")
    page.set_input_files("#image-input", str(scene))
    page.get_by_label("Mask file for instance 1").set_input_files(str(masks[0]))
    wait_until(page, "document.querySelector('.instance .coverage').textContent.includes('%')")
    page.get_by_role("button", name="Start learning").click()
    page.locator("#compose").wait_for()
    syntheses: list[str] = []
    page.on("request", lambda r: syntheses.append(r.url) if r.method == "POST" else None)
    page.get_by_label("Prompt").fill("a photo of <asset0>")
    fields = page.locator('[data-token="<asset0>"] input')
    fields.nth(0).fill("0.1")
    fields.nth(1).fill("0.2")
    page.get_by_role("button", name="Synthesise").click()
    problem = page.locator('[data-field="boxes[<asset0>]"] .problem')
    assert "only some of x0, y0, x1, y1" in problem.inner_text()
    assert syntheses == []
    assert page.evaluate("document.activeElement.getAttribute('aria-invalid')") == "true"


def test_canceled_key_prompt_stops_polling(page: Any, open_service: str) -> None:
    """A job read refused with 401: Cancel on the prompt ends the following, and says so."""
    job = "00000000-0000-4000-8000-000000000001"
    refusal = {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "This server requires an API key.",
        "fix": "send a key",
    }
    reads: list[str] = []

    def refuse(route: Any) -> None:
        reads.append(route.request.url)
        route.fulfill(status=401, content_type="application/problem+json", body=json.dumps(refusal))

    page.route(re.compile(rf"/v1/jobs/{job}(/events)?$"), refuse)
    page.goto(open_service + "/console/#/jobs")
    page.locator("main h2").wait_for()
    page.evaluate(
        """async (id) => {
          const box = document.createElement('div');
          box.id = 'probe';
          document.querySelector('main').append(box);
          const { trackJob } = await import('./js/progress.js');
          trackJob(box, { id, status: 'running', progress: {} });
        }""",
        job,
    )
    dialog = page.get_by_role("dialog", name="API key")
    dialog.wait_for()
    dialog.get_by_role("button", name="Cancel", exact=True).click()
    page.locator("#probe .problem").filter(has_text="No longer followed").wait_for()
    count = len(reads)
    page.wait_for_timeout(2500)
    assert len(reads) == count
    assert not page.get_by_role("dialog", name="API key").is_visible()
