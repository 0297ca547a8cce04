"""`mifo evaluate` end to end on the tiny models ('tiny' is for tests)."""

import json

import pytest

from mifo_cli import main

ARGS = ["--images-per-prompt", "1", "--steps", "1", "--clip-model", "tiny", "--dino-model", "tiny"]
ARGS += ["--device", "cpu"]


@pytest.fixture(scope="module")
def concept_dir(tiny_concept, tmp_path_factory):
    return tiny_concept.save(tmp_path_factory.mktemp("concept") / "c")


def test_evaluate_prints_the_table_and_writes_the_folder(concept_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    prompt = "a photo of {token} in the snow"
    code = main(["evaluate", str(concept_dir), "--prompt", prompt, "--out", str(out), *ARGS])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:3] == ["token", "name", "images"]
    assert [line.split()[0] for line in lines[1:4]] == ["<asset0>", "<asset1>", "mean"]
    assert lines[-1] == f"evaluation written to {out}"
    assert "evaluation" in captured.err  # the progress bar
    record = json.loads((out / "evaluation.json").read_text())
    assert record["config"]["prompts"] == [prompt] and len(record["images"]) == 2
    assert (out / "chart.png").is_file() and (out / "images" / "image_001.png").is_file()


def test_evaluate_json_is_one_object(concept_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        ["evaluate", str(concept_dir), "--prompt", "<asset0> and <asset1>", "--out", str(out)]
        + [*ARGS, "--json"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and [r["token"] for r in summary["rows"]] == [
        "<asset0>",
        "<asset1>",
    ]
    assert summary["mean"]["images"] == 2


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--prompt", "a photo of a toy"], "names none of this concept's tokens"),
        (["--mask", "m0.png"], "--image and --mask go together"),
        (["--dino-model", "facebook/dino-vits16@main"], "dino_model"),
    ],
)
def test_bad_requests_exit_2_and_write_nothing(concept_dir, tmp_path, capsys, extra, said):
    out = tmp_path / "eval"
    code = main(["evaluate", str(concept_dir), "--out", str(out), *ARGS, *extra])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert said in err and "Loaded base model" not in err  # refused before any model loads
