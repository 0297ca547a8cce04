"""The concept page's evaluation in chromium, against a real `mifo serve` with the tiny base
and feature models: a refused prompt said beside the prompts, then an evaluation run from
the page, followed live, its table (per token SIM-C, SIM-D, NSIM-D, CS and the mean) and
chart shown, and the same on a later visit, read through the public API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import INSTANCES, is_png
from tests.browser.test_console import wait_until
from tests.browser.test_console_layout import ready_concept

pytestmark = pytest.mark.slow
TOKENS = [f"<asset{i}> {name}" for i, name in enumerate(INSTANCES)]
ROWS = "[...document.querySelectorAll('#evaluation table.metrics tbody tr')]"


def table(page: Any) -> list[list[str]]:
    """The metrics table as text, a list per row (its header cell first)."""
    return page.evaluate(f"{ROWS}.map((r) => [...r.children].map((c) => c.textContent.trim()))")


def test_evaluate_from_the_concept_page_shows_the_table_and_the_chart(
    page: Any, open_service: str, scene_files: tuple[Path, list[Path]]
) -> None:
    cid = ready_concept(open_service, *scene_files)
    page.goto(f"{open_service}/console/#/concepts/{cid}")
    fold = page.locator("#evaluation")
    fold.locator("summary").wait_for()
    wait_until(page, "document.querySelector('#evaluation .eval-note').textContent === 'none yet'")
    fold.locator("summary").click()
    prompts = page.get_by_label("Evaluation prompts, one per line")

    # A prompt that names no instance: the API's refusal beside the prompts, focused.
    prompts.fill("a photo of a dog")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    problem = fold.locator('[data-field="prompts"] .problem')
    wait_until(page, "document.querySelector('#eval-prompts').getAttribute('aria-invalid')")
    assert "a photo of a dog" in problem.text_content() and "{token}" in problem.text_content()
    assert page.evaluate("document.activeElement.id") == "eval-prompts"

    prompts.fill("a photo of {token} at the beach\n\n<asset0> next to <asset1>")
    page.get_by_label("Images per evaluation prompt").fill("1")
    page.get_by_label("Evaluation steps").fill("1")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    wait_until(page, f"{ROWS}.length === 3", timeout=180)
    assert problem.text_content() == ""
    rows = table(page)
    assert [r[0] for r in rows] == [*TOKENS, "Mean"]
    assert [r[1] for r in rows] == ["2", "2", "4"]  # images per token: alone, then together
    assert all(len(r) == 6 and all(" ± " in c for c in r[2:]) for r in rows), rows
    headers = page.locator("#evaluation table.metrics thead th").all_text_contents()
    assert headers == ["Token", "Images", "SIM-C", "SIM-D", "NSIM-D", "CS"]
    chart = fold.locator("img.evaluation-chart")
    wait_until(page, "document.querySelector('img.evaluation-chart').naturalWidth > 100")
    assert is_png(httpx.get(chart.get_attribute("src"), timeout=30).content)
    note = fold.locator(".eval-note").text_content()
    assert note.startswith("mean CS "), note

    # The job is the API's: its request is what the page sent.
    (job,) = httpx.get(f"{open_service}/v1/concepts/{cid}/evaluations", timeout=30).json()["data"]
    assert job["request"]["prompts"] == [
        "a photo of {token} at the beach",
        "<asset0> next to <asset1>",
    ]
    assert (job["request"]["images_per_prompt"], job["request"]["steps"]) == (1, 1)

    # A later visit shows the latest evaluation as it ended.
    page.goto(f"{open_service}/console/#/concepts")
    page.goto(f"{open_service}/console/#/concepts/{cid}")
    wait_until(
        page, "document.querySelector('#evaluation .eval-note').textContent.startsWith('mean CS')"
    )
    fold.locator("summary").click()
    wait_until(page, f"{ROWS}.length === 3")
    assert table(page) == rows
