"""`mifo remote segment` as a user runs it, against a real `mifo serve` with the tiny SAM:
clicks in, mask_00.png ... out, taken by `mifo remote learn` and by the engine's input check
(what `mifo learn` reads); the next clicks by --image-id; proposals; bad clicks refused here
or by the service, naming the option or field, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mifo_cli.remote.inputs import UsageError
from mifo_cli.remote.segment import instances
from mifo_engine.config import LearnConfig
from mifo_engine.inputs import check_inputs
from tests.cli.test_remote import PNG, _options, mifo
from tests.helpers.serve import QUICK


def test_masks_from_clicks_are_files_learning_takes(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, _ = scene
    out = tmp_path / "masks"
    clicks = ["--point", "30,40", "--instance", "--point", "66,40", "--exclude", "30,40"]
    done = mifo("segment", str(image), *clicks, "--out", str(out), "--overlay", "--api", service)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job = lines[0].split()[1]
    assert lines[0] == f"job {job} (segment) succeeded"
    assert [line.split(":")[0] for line in lines[1:3]] == ["  mask 0", "  mask 1"]
    assert lines[3].startswith("next clicks on this image: mifo remote segment --image-id ")
    names = ["mask_00.png", "mask_01.png", "overlay.png"]
    assert lines[4:] == [str(out / name) for name in names]
    assert all((out / name).read_bytes().startswith(PNG) for name in names)
    masks = [str(out / name) for name in names[:2]]
    # What `mifo learn` reads (the tiny SAM's random masks overlap: allowed here).
    check_inputs(str(image), masks, resolution=64, config=LearnConfig(max_mask_overlap=1.0))
    learn = mifo(
        "learn",
        str(image),
        *masks,
        *_options({**QUICK, "max_mask_overlap": 1.0}),
        "--wait",
        "-q",
        "--api",
        service,
    )
    assert learn.returncode == 0, learn.stderr
    assert "(learn) succeeded" in learn.stdout


def test_the_next_clicks_reuse_the_image_and_proposals_find_instances(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, _ = scene
    first = mifo("segment", str(image), "--box", "10,20,45,60", "--json", "--api", service)
    assert first.returncode == 0, first.stderr
    image_id = json.loads(first.stdout)["result"]["segmentation"]["image_id"]
    again = mifo("segment", "--image-id", image_id, "--point", "30,40", "--json", "--api", service)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["result"]["segmentation"]["embedding_reused"] is True
    out = tmp_path / "found"
    loose = ["--option", "points_per_side=4", "--option", "min_predicted_iou=0"]
    loose += ["--option", "min_stability=0", "--option", "max_proposals=2"]
    found = mifo(
        "segment", "--image-id", image_id, "--propose", *loose, "--out", str(out), "--api", service
    )
    assert found.returncode == 0, found.stderr
    assert "  candidate 0: score " in found.stdout
    assert sorted(p.name for p in out.iterdir())[0] == "candidate_00.png"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--point", "30;40"], "--point"),
        (["--box", "1,2,3"], "--box"),
        (["--point", "1,1", "--instance"], "--instance"),
        ([], "--point"),
        (["--point", "300,40"], "prompts[0].points[0]"),  # refused by the service
        (["--propose", "--point", "1,1"], "--propose"),
    ],
)
def test_bad_clicks_are_refused_naming_the_option_or_field(
    service: str, scene: tuple[Path, list[Path]], args: list[str], field: str
) -> None:
    done = mifo("segment", str(scene[0]), *args, "--api", service)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert field in done.stderr and "fix:" in done.stderr, done.stderr


def test_the_clicks_group_into_instances_in_order() -> None:
    clicks = [("point", "1,2"), ("exclude", "3.5,4"), ("instance", None), ("box", "0,0,9,9")]
    assert instances(clicks) == [  # type: ignore[arg-type]
        {"points": [[1, 2], [3.5, 4]], "labels": [1, 0]},
        {"box": [0, 0, 9, 9]},
    ]
    with pytest.raises(UsageError) as caught:
        instances([("box", "0,0,9,9"), ("box", "1,1,2,2")])
    assert caught.value.field == "--box"
