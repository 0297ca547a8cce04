"""`mifo remote evaluate` as a user runs it, against a real `mifo serve --base-model tiny`
with the tiny feature models: the table of the metrics, evaluation.json, the chart and the
images in --out; the job as JSON; a refused prompt naming its field, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_remote import PNG, WAIT, _env, _options
from tests.helpers.serve import QUICK, ROOT

pytestmark = pytest.mark.slow


def mifo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mifo_cli", "remote", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def concept(service: str, scene: tuple[Path, list[Path]]) -> str:
    image, masks = scene
    learn = ["learn", str(image), *map(str, masks), "--names", "left blob,right blob"]
    done = mifo(*learn, *_options(QUICK), "--wait", "--json", "-q", "--api", service)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["result"]["concept"]["id"])


def test_evaluate_prints_the_table_and_saves_the_json_the_chart_and_the_images(
    service: str, concept: str, tmp_path: Path
) -> None:
    out = tmp_path / "evaluation"
    run = ["evaluate", concept, "--prompt", "a photo of {token} at the beach"]
    run += ["--prompt", "<asset0> and <asset1>", "--images-per-prompt", "1", "--steps", "1"]
    done = mifo(*run, "--seed", "4", "--out", str(out), "-q", "--api", service)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job = lines[0].split()[1]
    assert lines[0] == f"job {job} (evaluate) succeeded"
    assert lines[1].split() == ["TOKEN", "NAME", "IMAGES", "SIM-C", "SIM-D", "NSIM-D", "CS"]
    assert lines[2].split()[:4] == ["<asset0>", "left", "blob", "2"]  # alone, then with <asset1>
    assert lines[3].split()[:4] == ["<asset1>", "right", "blob", "2"]
    assert lines[4].split()[:5] == ["mean", "all", "instances", "4", lines[4].split()[4]]
    assert " +- " in lines[2] and lines[5].startswith("  chart: http")
    expected = [f"{job}_evaluation.json", f"{job}_chart.png"]
    expected += [f"{job}_image_{i:03d}.png" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert lines[6:] == [str(out / name) for name in expected]
    record = json.loads((out / expected[0]).read_text())
    assert [row["token"] for row in record["rows"]] == ["<asset0>", "<asset1>"]
    assert record["config"]["seed"] == 4 and record["config"]["steps"] == 1
    assert all((out / name).read_bytes().startswith(PNG) for name in expected[1:])

    again = mifo("wait", job, "--json", "--api", service)
    assert again.returncode == 0, again.stderr
    evaluation = json.loads(again.stdout)["result"]["evaluation"]
    assert evaluation["mean"]["images"] == 4 and len(evaluation["images"]) == 3


def test_without_wait_it_prints_the_job_to_follow(service: str, concept: str) -> None:
    done = mifo("evaluate", concept, "--prompt", "{token}", "--steps", "1", "--api", service)
    assert done.returncode == 0, done.stderr
    first, *_, follow = done.stdout.splitlines()
    job = first.split()[1]
    assert first.startswith(f"job {job} (evaluate) ") and follow.endswith(
        f"wait {job} --api {service}"
    )
    assert mifo("wait", job, "-q", "--api", service).returncode == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--prompt", "a photo of a dog"], "prompts"),
        (["--images-per-prompt", "99"], "images_per_prompt"),
    ],
)
def test_a_refused_request_names_its_field_and_exits_2(
    service: str, concept: str, args: list[str], field: str
) -> None:
    done = mifo("evaluate", concept, *args, "--api", service)
    assert done.returncode == 2 and done.stdout == ""
    first, fix = done.stderr.splitlines()
    assert first.startswith(f"mifo remote: {field}") and "(422 /problems/" in first, first
    assert fix.startswith("  fix: ")


def test_synthesize_with_evaluate_prints_each_images_metrics(service: str, concept: str) -> None:
    boxes = ["--box", "<asset0>=0.05,0.3,0.45,0.8", "--box", "<asset1>=0.55,0.3,0.95,0.8"]
    run = ["synthesize", concept, "<asset0> and <asset1>", *boxes, "--steps", "1", "--evaluate"]
    done = mifo(*run, "--wait", "-q", "--api", service)
    assert done.returncode == 0, done.stderr
    image = done.stdout.splitlines()[1]
    assert image.startswith("  image 0: seed 0, in its box: ") and ", SIM-C " in image
    assert "; <asset0> SIM-D " in image and "; <asset1> SIM-D " in image and " CS " in image
