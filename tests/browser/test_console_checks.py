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

from api.console import STATIC
from api.schemas import ConceptPublic
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
    # The eraser takes paint away, undo gives it back.
    page.get_by_label("Eraser", exact=True).check()
    drag(page, "#paint-canvas", [(x0 - 0.02, (y0 + y1) / 2), (x1 + 0.02, (y0 + y1) / 2)])
    assert coverage(page, 1) < painted - 0.003
    page.get_by_role("button", name="Undo").click()
    assert coverage(page, 1) == painted
    # A larger brush paints more: the same stroke, taken back each time.
    page.get_by_label("Brush", exact=True).check()
    added = []
    for size in ("4", "40"):
        page.get_by_label(re.compile("^Brush size")).fill(size)
        assert page.locator("#brush-size-value").inner_text() == size
        drag(page, "#paint-canvas", [(0.1, 0.9), (0.5, 0.9)])
        added.append(coverage(page, 1) - painted)
        page.get_by_role("button", name="Undo").click()
        assert coverage(page, 1) == painted
    assert added[1] > 4 * added[0] > 0, added
    refused_in_the_page_and_by_the_api(page)
    assert icons == []  # the icon is inline: no request, no 404
    # A wide image: the engine keeps its centred square, so the sides are shaded.
    Image.new("RGB", (320, 160), (128, 128, 128)).save(tmp_path / "wide.png")
    page.set_input_files("#image-input", str(tmp_path / "wide.png"))
    pixel = "([x, y]) => document.querySelector('#paint-canvas').getContext('2d').getImageData(x, y, 1, 1).data[0]"
    wait_until(page, "document.querySelector('#paint-canvas').width === 320")
    assert page.evaluate(pixel, [160, 80]) == 128
    assert page.evaluate(pixel, [20, 80]) < 80 and page.evaluate(pixel, [300, 80]) < 80


def focused(page: Any, label: str) -> bool:
    return page.get_by_label(label, exact=True).evaluate("e => e === document.activeElement")


def only_invalid(page: Any, label: str) -> None:
    """The control named `label` has the focus and is the only one marked aria-invalid."""
    assert focused(page, label), page.evaluate("document.activeElement.outerHTML")
    marked = page.locator("[aria-invalid=true]")
    assert marked.count() == 1 and marked.evaluate("e => e.labels[0].textContent") == label


def refused_in_the_page_and_by_the_api(page: Any) -> None:
    """Each refusal beside its field, whose control gets the focus: the page's own checks,
    the API's (a name too long, two equal names, one starting with '<', an unknown option),
    and one naming no field, whose message gets the focus."""
    learn = page.get_by_role("button", name="Start learning")
    page.get_by_role("button", name="Add instance").click()
    learn.click()
    assert "is empty" in page.locator('[data-field="masks[2]"] .problem').inner_text()
    only_invalid(page, "Mask file for instance 3")
    paint_instance(page, (0.4, 0.05, 0.6, 0.25))  # painted now: the refusal of it goes
    assert page.locator('[data-field="masks[2]"] .problem').inner_text() == ""
    assert page.locator('[data-field="masks[2]"].invalid').count() == 0
    page.get_by_role("button", name="Remove instance 3").click()
    name = page.get_by_label("Name of instance 2")
    name.fill("")
    learn.click()
    assert "has no name" in page.locator('[data-field="names[1]"] .problem').inner_text()
    only_invalid(page, "Name of instance 2")
    problem = page.locator('[data-field="names[1]"] .problem')
    for value, says in [
        ("x" * 101, "names[1] is 101 characters"),
        ("instance 1", "names[1] is 'instance 1' again"),
        ("<b> block", "may not start with '<'"),
    ]:
        name.fill(value)
        learn.click()
        problem.filter(has_text=says).wait_for()
        only_invalid(page, "Name of instance 2")
        assert page.locator(".problem:not(:empty)").count() == 1
    name.fill("orange block")
    options = "Options (JSON object of LearnConfig fields)"
    page.get_by_text("Advanced: every option as JSON").click()  # the JSON, folded at first
    for value, says in [
        ("{not json", "not a JSON object"),
        ('{"lr": "fast"}', "field 'lr' cannot be 'fast'"),
    ]:
        page.get_by_label(options).fill(value)
        learn.click()
        page.locator('[data-field="options"] .problem').filter(has_text=says).wait_for()
        only_invalid(page, options)
    page.get_by_label("Preset").select_option("quick")

    def busy(route: Any) -> None:
        if route.request.method != "POST":
            return route.fallback()
        body = {"title": "Busy", "status": 503, "detail": "The queue is full.", "fix": "wait"}
        route.fulfill(status=503, content_type="application/problem+json", body=json.dumps(body))

    page.route(re.compile(r"/v1/concepts$"), busy)
    learn.click()
    line = page.locator("#new-form .form-problem")
    line.filter(has_text="The queue is full.").wait_for()
    assert line.evaluate("e => e === document.activeElement")
    page.unroute(re.compile(r"/v1/concepts$"))


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
    reads: list[str] = []
    page.on("requestfinished", lambda r: reads.append(r.url) if "/v1/jobs?" in r.url else None)
    for _ in range(600):  # two re-reads have been answered and drawn (up to a minute)
        if len(reads) >= 2:
            break
        page.wait_for_timeout(100)
    assert len(reads) >= 2, "the jobs list did not read itself again"
    page.wait_for_timeout(200)
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
    page.get_by_label("Prompt", exact=True).fill("a photo of <asset0>")
    fields = page.locator('[data-token="<asset0>"] input')
    fields.nth(0).fill("0.1")
    fields.nth(1).fill("0.2")
    page.get_by_role("button", name="Synthesise").click()
    problem = page.locator('[data-field="boxes[<asset0>]"] .problem')
    assert "only some of x0, y0, x1, y1" in problem.inner_text()
    assert syntheses == []
    only_invalid(page, "x0 (left)")


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


def served_concept(tokens: list[tuple[str, float]]) -> dict[str, Any]:
    """A ready concept's body with these names and shares inside other instances."""
    cid = "00000000-0000-4000-8000-0000000000c1"
    return ConceptPublic.model_validate(
        {
            "id": cid,
            "status": "ready",
            "base_model": "tiny",
            "tokens": [{"token": f"<asset{i}>", "name": n} for i, (n, _) in enumerate(tokens)],
            "diagnostics": {
                f"<asset{i}>": {"leakage_outside_mask": 0.5, "leakage_into_other_instances": v}
                for i, (_, v) in enumerate(tokens)
            },
            "width": SIDE,
            "height": SIDE,
            "options": {},
            "learn_job_id": None,
            "inputs": {"image": None, "masks": []},
            "created_at": "2026-01-01T12:00:00Z",
            "updated_at": "2026-01-01T12:00:00Z",
            "links": {"self": f"/v1/concepts/{cid}"},
        }
    ).model_dump(mode="json")


def test_leakage_warning_and_boxes_by_mouse(page: Any, open_service: str) -> None:
    """On a concept served by the test: the warning for exactly the tokens whose share inside
    another instance reaches the threshold; a box moved and resized by mouse; box names
    placed apart."""
    found = re.search(r"LEAK_WARN = ([\d.]+);", (STATIC / "js" / "concept.js").read_text())
    assert found, "concept.js has no LEAK_WARN"
    warn = float(found.group(1))
    body = served_concept([("red block", warn), ("orange block", warn - 0.001), ("grey", 0.9)])
    page.route(re.compile(rf"/v1/concepts/{body['id']}$"), lambda r: r.fulfill(json=body))
    empty = {"total": 0, "limit": 20, "offset": 0, "next": None, "data": []}
    page.route(
        re.compile(rf"/v1/concepts/{body['id']}/syntheses\?"), lambda r: r.fulfill(json=empty)
    )
    page.goto(f"{open_service}/console/#/concepts/{body['id']}")
    cards = page.locator("#attention .map-card")
    cards.nth(2).wait_for()
    assert [cards.nth(i).locator(".warning").count() for i in range(3)] == [1, 0, 1]
    assert "10% of <asset0>'s attention" in cards.nth(0).locator(".warning").inner_text()
    # Drawn, then dragged from inside (moved by the drag), then by its bottom-right corner.
    page.locator("#compose").wait_for()
    fields = page.locator('[data-token="<asset0>"] input')

    def box() -> list[float]:
        return [float(fields.nth(k).input_value()) for k in range(4)]

    def near(got: list[float], want: list[float]) -> bool:
        return all(abs(g - w) < 0.01 for g, w in zip(got, want, strict=True))

    drag(page, "#box-canvas", [(0.1, 0.2), (0.4, 0.6)])
    assert near(box(), [0.1, 0.2, 0.4, 0.6]), box()
    drag(page, "#box-canvas", [(0.25, 0.4), (0.35, 0.45)])
    assert near(box(), [0.2, 0.25, 0.5, 0.65]), box()
    drag(page, "#box-canvas", [(0.5, 0.65), (0.7, 0.9)])
    assert near(box(), [0.2, 0.25, 0.7, 0.9]), box()
    # Side by side, each name where the frame's labels do not cover one another.
    placed = page.evaluate(
        """async () => {
          const { placeLabels } = await import('./js/box-geometry.js');
          const c = document.querySelector('#box-canvas');
          const ctx = c.getContext('2d');
          // a frame of 290 px, where these names collide (the frame on the page is larger)
          const W = 290, H = 290, lh = 18;
          const item = ([x0, y0, x1, y1], label) => ({ x: x0 * W, y: y0 * H, w: (x1 - x0) * W,
            h: (y1 - y0) * H, lw: ctx.measureText(label).width + 8, lh });
          const items = [item([0.3, 0.25, 0.7, 0.6], '<asset1> orange block'),
            item([0.05, 0.25, 0.35, 0.6], '<asset0> red block'),
            item([0.1, 0, 0.5, 0.2], '<asset2> grey'), item([0.6, 0.95, 1, 1], '<asset3> x')];
          return { W, H, items, labels: placeLabels(items, W, H) };
        }"""
    )
    labels, items = placed["labels"], placed["items"]
    for i, (a, it) in enumerate(zip(labels, items, strict=True)):
        assert 0 <= a["x"] <= a["x"] + a["w"] <= placed["W"] + 0.5, a
        assert 0 <= a["y"] <= a["y"] + a["h"] <= placed["H"], a
        assert a["x"] <= it["x"] + it["w"] and it["x"] <= a["x"] + a["w"], (a, it)  # over it
        assert it["y"] - a["h"] <= a["y"] <= it["y"] + it["h"], (a, it)  # by its box
        for b in labels[:i]:
            apart = a["x"] >= b["x"] + b["w"] or b["x"] >= a["x"] + a["w"]
            assert apart or a["y"] >= b["y"] + b["h"] or b["y"] >= a["y"] + a["h"], (a, b)
    assert labels[0]["y"] == items[0]["y"] - 18  # the first (the selected) above its box
    assert labels[1]["y"] > items[1]["y"] - 18, placed  # the second made room for it
