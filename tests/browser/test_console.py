"""The console's whole journey in chromium: paint two masks, learn, compose, synthesise,
download; then the API's refusals shown where they belong (a box off the frame, keys)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import INSTANCES, is_png

pytestmark = pytest.mark.slow
NAMES = list(INSTANCES)
JOB_URL = re.compile(r"/v1/jobs/[0-9a-f-]{36}$")  # one job's status: what polling reads


def wait_until(page: Any, condition: str, timeout: float = 90) -> None:
    """Poll a JavaScript condition (Playwright's wait_for_function compiles it with eval,
    which the console's content security policy refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {condition}"
        time.sleep(0.1)


def drag(page: Any, selector: str, points: list[tuple[float, float]]) -> None:
    """Press at the first point, move through the others, release; fractions of the element."""
    target = page.locator(selector)
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def paint_instance(page: Any, box: tuple[float, float, float, float]) -> None:
    """Brush the box's outline, then fill its inside."""
    x0, y0, x1, y1 = box
    page.get_by_label("Brush", exact=True).check()
    drag(page, "#paint-canvas", [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
    page.get_by_label("Fill", exact=True).check()
    drag(page, "#paint-canvas", [((x0 + x1) / 2, (y0 + y1) / 2)])


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button, canvas')]
  .filter((e) => !e.closest('[hidden]') && !e.closest('dialog:not([open])'))
  .filter((e) => !(e.getAttribute('aria-label') || (e.labels && e.labels.length)
    || (e.tagName === 'BUTTON' && e.textContent.trim())))
  .map((e) => e.outerHTML.slice(0, 120))"""


def fits_and_labelled(page: Any) -> None:
    """Every visible control has a name, and nothing is wider than the window."""
    assert page.evaluate(UNLABELLED) == []
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def coverage(page: Any, n: int) -> float:
    text = page.locator(".instance .coverage").nth(n).inner_text()
    found = re.match(r"([\d.]+)% of the image", text)
    assert found, text
    return float(found.group(1)) / 100


def learn_with_painted_masks(page: Any, base: str, scene: Path, shots: Path) -> None:
    page.goto(base + "/")
    assert page.url.endswith("/console/")
    page.set_input_files("#image-input", str(scene))
    page.locator("#brush-size").fill("10")
    for i, (name, box) in enumerate(INSTANCES.items()):
        if i:
            page.get_by_role("button", name="Add instance").click()
        paint_instance(page, box)
        area = (box[2] - box[0]) * (box[3] - box[1])
        assert 0.8 * area < coverage(page, i) < 1.3 * area, (name, coverage(page, i), area)
        page.get_by_label(f"Name of instance {i + 1}").fill(name)
    # A stray stroke taken back: undo restores the mask as it was.
    before = coverage(page, 1)
    page.get_by_label("Brush", exact=True).check()
    drag(page, "#paint-canvas", [(0.05, 0.9), (0.95, 0.9)])
    assert coverage(page, 1) > before
    page.get_by_role("button", name="Undo").click()
    assert coverage(page, 1) == before
    page.get_by_label("Preset").select_option("quick")
    assert (
        '"phase1_steps"'
        in page.get_by_label("Options (JSON object of LearnConfig fields)").input_value()
    )
    fits_and_labelled(page)
    page.screenshot(path=str(shots / "console-new-concept.png"))
    page.get_by_role("button", name="Start learning").click()
    page.wait_for_url(re.compile(r"#/concepts/[0-9a-f-]{36}$"))


def test_paint_learn_compose_synthesise_download(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]], shots: Path
) -> None:
    streams: list[Any] = []
    page.on("request", lambda r: streams.append(r) if r.url.endswith("/events") else None)
    learn_with_painted_masks(page, open_service, scene_files[0], shots)
    # Learning: live progress, then one attention map per token with its leakage.
    maps = page.locator("#attention img.attention-map")
    maps.nth(2).wait_for()
    assert page.locator("#learning .status-line").inner_text() == "Status: succeeded"
    # Followed with EventSource: no key in use, so none sent.
    assert streams and all("authorization" not in r.headers for r in streams)
    for i, name in enumerate(NAMES):
        card = page.locator(".map-card").nth(i + 1)
        assert card.locator("h4").inner_text() == f"<asset{i}> {name}"
        assert re.search(r"Inside other instances\s+\d+%", card.inner_text())
    wait_until(
        page, "[...document.querySelectorAll('img.attention-map')].every(i => i.naturalWidth > 0)"
    )
    # Compose: the chips insert the tokens at the cursor.
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a photo of")
    page.get_by_role("button", name=f"<asset0> {NAMES[0]}").click()
    prompt.press_sequentially(" next to")
    page.get_by_role("button", name=f"<asset1> {NAMES[1]}").click()
    assert prompt.input_value() == "a photo of <asset0> next to <asset1>"
    # One box per token, drawn on the frame; the number fields follow.
    drag(page, "#box-canvas", [(0.05, 0.3), (0.45, 0.8)])
    page.get_by_label(f"<asset1> {NAMES[1]}", exact=True).check()
    drag(page, "#box-canvas", [(0.55, 0.3), (0.95, 0.8)])
    x0 = page.locator('[data-token="<asset1>"] input').first
    assert abs(float(x0.input_value()) - 0.55) < 0.02
    page.locator("#box-canvas").focus()
    page.keyboard.press("Shift+ArrowLeft")
    assert abs(float(x0.input_value()) - 0.45) < 0.02
    page.keyboard.press("ArrowRight")
    assert abs(float(x0.input_value()) - 0.46) < 0.02
    x1 = page.locator('[data-token="<asset1>"] input').nth(2)
    right = float(x1.input_value())
    page.keyboard.press("Alt+ArrowRight")  # resizes: the right edge moves, the left stays
    assert abs(float(x1.input_value()) - (right + 0.01)) < 0.002
    assert abs(float(x0.input_value()) - 0.46) < 0.02
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_label("Number of images").fill("2")
    page.get_by_label("Seed", exact=True).fill("3")
    page.get_by_role("button", name="Synthesise").click()
    # Results: both images, the layout preview toggled over one, in-box shares, a download.
    images = page.locator(".gallery .stack img:not(.preview)")
    images.nth(1).wait_for()
    wait_until(
        page,
        "[...document.querySelectorAll('.gallery img:not(.preview)')].every(i => i.naturalWidth > 0)",
    )
    first = page.locator(".gallery .result").first
    first.get_by_role("button", name="Show layout").click()
    assert first.locator("img.preview").is_visible()
    assert re.search(r"<asset0>: \d+% in its box", first.locator(".shares").inner_text())
    fits_and_labelled(page)
    page.evaluate("scrollTo(0, 0)")  # the whole compose view fits the window
    page.screenshot(path=str(shots / "console-compose.png"))
    with page.expect_download() as download:
        first.get_by_role("link", name="Download image 1 (PNG)").click()
    assert is_png(Path(download.value.path()).read_bytes())
    # The lists: the concept with its thumbnail, the jobs by status.
    page.get_by_role("link", name="Concepts").click()
    card = page.locator(".card").first
    assert "ready" in card.inner_text() and card.locator("img.thumb").count() == 1
    fits_and_labelled(page)
    concept_page = card.get_by_role("link", name="Open").get_attribute("href")
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_label("Status").select_option("succeeded")
    wait_until(page, "document.querySelectorAll('#job-rows tr[data-job]').length === 2")
    for job_row in page.locator("#job-rows tr[data-job]").all():  # ids that paste back whole
        assert job_row.locator("code.job-id").inner_text() == job_row.get_attribute("data-job")
    names = ", ".join(INSTANCES)  # each row's link names its concept by its instances
    wait_until(
        page,
        f"[...document.querySelectorAll('#job-rows a')].every(a => a.textContent === 'Open concept: {names}')",
    )
    page.get_by_label("Status").select_option("running")
    page.wait_for_selector("#job-rows td.hint")
    fits_and_labelled(page)
    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    for view in ("#/new", concept_page, "#/concepts", "#/jobs"):
        page.goto(f"{open_service}/console/{view}")
        page.locator("main h2").wait_for()
        if view == concept_page:
            page.locator(".gallery img").first.wait_for()
        fits_and_labelled(page)


def test_problems_appear_next_to_their_fields(
    page: Any, keyed_service: tuple[str, str], scene_files: tuple[Path, list[Path]]
) -> None:
    base, key = keyed_service
    scene, masks = scene_files
    streams: list[Any] = []
    polls: list[str] = []
    page.on("request", lambda r: streams.append(r) if r.url.endswith("/events") else None)
    page.on("request", lambda r: polls.append(r.url) if JOB_URL.search(r.url) else None)
    page.goto(base + "/console/#/concepts")
    dialog = page.get_by_role("dialog", name="API key")
    dialog.wait_for()
    assert "This server requires an API key." in page.locator("#key-problem").inner_text()
    page.get_by_role("textbox", name="API key").fill("mifo_wrong")
    page.get_by_role("button", name="Use this key").click()
    wait_until(
        page, "document.querySelector('#key-problem').textContent.includes('The API key is')"
    )
    assert "mifo keys create" in page.locator("#key-problem").inner_text()
    stored = "sessionStorage.getItem('mifo.apiKey')"
    assert page.evaluate(stored) is None  # a refused key is not kept
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_selector("#concept-list li")
    assert page.evaluate(stored) == key  # kept once a request with it succeeded
    # Masks as files this time; the learning job followed with the key (no EventSource).
    page.get_by_role("link", name="New concept").click()
    page.set_input_files("#image-input", str(scene))
    for i, (name, mask) in enumerate(zip(NAMES, masks, strict=True)):
        if i:
            page.get_by_role("button", name="Add instance").click()
        page.get_by_label(f"Mask file for instance {i + 1}").set_input_files(str(mask))
        page.get_by_label(f"Name of instance {i + 1}").fill(name)
        wait_until(
            page, f"document.querySelectorAll('.instance .coverage')[{i}].textContent.includes('%')"
        )
    page.get_by_role("button", name="Start learning").click()
    page.locator("#compose").wait_for()
    page.get_by_label("Prompt", exact=True).fill("a photo of <asset0> and <asset1>")
    fields = page.locator('[data-token="<asset0>"] input')
    for k, value in enumerate(["0.5", "0.2", "1.3", "0.8"]):  # x1 past the right edge
        fields.nth(k).fill(value)
    page.get_by_role("button", name="Synthesise").click()
    problem = page.locator('[data-field="boxes[<asset0>]"] .problem')
    problem.wait_for()
    assert "outside [0, 1]" in problem.inner_text() and "Fix:" in problem.inner_text()
    assert page.locator(".gallery .result").count() == 0
    # A long run (the paper's steps) followed live, then canceled from the jobs list.
    page.get_by_role("link", name="New concept").click()
    page.set_input_files("#image-input", str(scene))
    page.get_by_label("Mask file for instance 1").set_input_files(str(masks[0]))
    wait_until(page, "document.querySelector('.instance .coverage').textContent.includes('%')")
    page.get_by_label("Preset").select_option("paper")
    assert page.get_by_label("Options (JSON object of LearnConfig fields)").input_value() == "{}"
    page.get_by_role("button", name="Start learning").click()
    status = page.locator("#learning .status-line")
    status.filter(
        has_text=re.compile(r"Phase 1: token embeddings · step \d+ of 800 · ETA")
    ).wait_for()
    # The step's loss terms, as the job's progress reports them.
    page.locator("#learning .losses").filter(has_text=re.compile(r"rec \d")).wait_for()
    # Followed through fetch(), which can send the key EventSource cannot: no polling.
    assert streams and all(r.headers.get("authorization") == f"Bearer {key}" for r in streams)
    assert len(polls) <= 3, polls  # the concept page's own reads of its learning jobs
    # Canceled from its own page (with the key), then seen in the jobs list.
    page.locator("#learning").get_by_role("button", name="Cancel job").click()
    status.filter(has_text=re.compile("^Status: canceled$")).wait_for()
    assert page.locator("#learning button.cancel").is_hidden()
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_label("Status").select_option("running")
    page.locator("#job-rows td.hint").wait_for()
    page.get_by_label("Status").select_option("canceled")
    page.locator("#job-rows tr[data-job]").first.wait_for()
    assert page.locator("#job-rows tr[data-job]").count() == 1
    # Delete the canceled concept from the list, after confirming.
    page.get_by_role("link", name="Concepts").click()
    cards = page.locator(".card")
    cards.nth(1).wait_for()
    assert "canceled" in cards.first.inner_text()
    page.once("dialog", lambda dialog: dialog.accept())
    cards.first.get_by_role("button", name=re.compile("^Delete ")).click()
    wait_until(page, "document.querySelectorAll('.card').length === 1")
    assert "ready" in cards.first.inner_text()
