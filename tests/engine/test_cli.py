"""`mifo learn` and `mifo synthesize` end to end on the tiny model ('tiny' is for tests)."""

import json

import pytest
from PIL import Image

from mifo_cli import build_parser, main
from mifo_engine.config import LearnConfig
from tests.helpers.images import encode, make_wide_scene, mask_as_jpeg, mask_as_rgba_alpha


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A non-square JPEG scene with an alpha-only RGBA mask and a JPEG-noisy mask."""
    root = tmp_path_factory.mktemp("inputs")
    image, masks = make_wide_scene(seed=3)
    (root / "scene.jpg").write_bytes(encode(image, "JPEG", quality=90))
    (root / "m0.png").write_bytes(encode(mask_as_rgba_alpha(masks[0])))
    (root / "m1.jpg").write_bytes(encode(mask_as_jpeg(masks[1]), "JPEG"))
    return root


def test_learn_then_synthesize(inputs, tmp_path, capsys):
    concept = tmp_path / "concept"
    code = main(
        [
            "learn",
            str(inputs / "scene.jpg"),
            str(inputs / "m0.png"),
            str(inputs / "m1.jpg"),
            "--out",
            str(concept),
            "--model",
            "tiny",
            "--names",
            "left,right",
            "--init-words",
            "toy,toy",
            "--phase1-steps",
            "4",
            "--phase2-steps",
            "2",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)  # --json: one object on stdout, nothing else
    assert summary["out"] == str(concept)
    assert [(t["token"], t["name"]) for t in summary["tokens"]] == [
        ("<asset0>", "left"),
        ("<asset1>", "right"),
    ]
    assert all(0 <= t["outside"] <= 1 and 0 <= t["others"] <= 1 for t in summary["tokens"])
    meta = json.loads((concept / "concept.json").read_text())
    assert [t["name"] for t in meta["tokens"]] == ["left", "right"]
    assert meta["config"]["phase1_steps"] == 4 and meta["config"]["reward_steps"] is None
    assert LearnConfig.from_mapping(meta["config"]).reward_iterations == 1  # a quarter
    assert meta["seed"] == 1 and meta["base_model"]["spec"] == "tiny"
    assert Image.open(concept / "attention" / "asset1.png").size == (64, 64)

    out = tmp_path / "images"
    code = main(
        [
            "synthesize",
            str(concept),
            "--prompt",
            "a photo of <asset0> and <asset1> at the beach",
            "--box",
            "<asset0>=0.05,0.30,0.45,0.80",
            "--box",
            "right=0.55,0.30,0.95,0.80",
            "--out",
            str(out),
            "--num-images",
            "2",
            "--seed",
            "4",
            "--steps",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    record = json.loads((out / "synthesis.json").read_text())
    assert record["seeds"] == [4, 5]
    assert set(record["boxes"]) == {"<asset0>", "<asset1>"}
    assert Image.open(out / "image_01.png").size == (64, 64)
    assert Image.open(out / "preview_00.png").size[0] >= 256
    said = capsys.readouterr()
    # The summary on stdout, one line per image; the progress on stderr, each phase's bar
    # ending full and without an ETA.
    assert any(
        line.startswith("image_00.png (seed 4): <asset0> ") for line in said.out.splitlines()
    )
    assert said.out.splitlines()[-1] == f"images written to {out}" and "in box" in said.out
    assert "synthesis    100%|" in said.err and "<" not in said.err.rsplit("\r", 1)[-1]


def test_bad_mask_exits_2_with_one_line_and_writes_nothing(inputs, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.new("L", (10, 10), 255).save(small)
    out = tmp_path / "never"
    code = main(
        [
            "learn",
            str(inputs / "scene.jpg"),
            str(small),
            "--out",
            str(out),
            "--model",
            "tiny",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mifo learn: error:") and "masks[0]" in err[0]
    assert not out.exists()


def test_existing_output_refused_before_any_work(inputs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep").write_text("x")
    code = main(
        [
            "learn",
            str(inputs / "scene.jpg"),
            str(inputs / "m0.png"),
            "--out",
            str(out),
            "--model",
            "tiny",
        ]
    )
    assert code == 2
    assert "--out" in capsys.readouterr().err


def test_unknown_model_path_says_how_to_fix(inputs, tmp_path, capsys):
    code = main(
        [
            "learn",
            str(inputs / "scene.jpg"),
            str(inputs / "m0.png"),
            "--out",
            str(tmp_path / "c"),
            "--model",
            str(tmp_path / "no-such-model"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "MIFO_BASE_MODEL" in err


def test_bad_box_exits_2(tmp_path, capsys):
    code = main(
        [
            "synthesize",
            str(tmp_path),
            "--prompt",
            "p",
            "--box",
            "nonsense",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "concept.json" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["learn", "synthesize"])
def test_help_documents_every_option(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = sub.format_help()
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.dest} has no help text"
            assert (
                action.option_strings[0] if action.option_strings else action.metavar or action.dest
            ) in text


def test_package_names_stay_functions_after_use():
    import mifo_engine as me

    first = me.learn
    import mifo_engine.learning  # noqa: F401  (importing the module must not shadow the name)

    assert me.learn is first and callable(me.learn)
    assert callable(me.synthesize) and callable(me.load_base_model)


def test_synthesize_reads_a_config_file(tmp_path):
    from mifo_engine.config import SynthesisConfig

    path = tmp_path / "s.json"
    path.write_text('{"steps": 12, "loss_layers": [["mid", 8]], "mask_refinement": false}')
    cfg = SynthesisConfig.from_file(path)
    assert cfg.steps == 12 and cfg.loss_layers == (("mid", 8),) and not cfg.mask_refinement
    path.write_text('{"loss_layers": [["mid", 8, 9]]}')
    with pytest.raises(Exception, match="loss_layers"):
        SynthesisConfig.from_file(path)


@pytest.mark.parametrize(
    ("prompt", "box", "message"),
    [
        ("a photo of <asset0>", "<asset1>=0.1,0.1,0.5,0.5", "does not mention <asset1>"),
        ("   ", "<asset0>=0.1,0.1,0.5,0.5", "prompt is empty"),
        ("a photo of <asset0>", "<asset0>=0.6,0.1,0.5,0.5", "inverted or empty"),
    ],
)
def test_synthesize_checks_the_prompt_and_boxes_before_loading_the_model(
    tiny_concept, tmp_path, capsys, monkeypatch, prompt, box, message
):
    tiny_concept.save(tmp_path / "concept")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr("mifo_engine.models.load_base_model", refuse)
    argv = ["synthesize", str(tmp_path / "concept"), "--prompt", prompt, "--box", box]
    code = main([*argv, "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "loaded before" not in err


@pytest.fixture(scope="module")
def two_levels(tmp_path_factory):
    """A 2-level UNet pipeline in diffusers layout, and a scene with two masks."""
    from tests.helpers.images import make_scene
    from tests.helpers.models import SHAPES, save_shape

    root = tmp_path_factory.mktemp("two_levels")
    image, masks = make_scene(seed=2)
    image.save(root / "scene.png")
    for i, mask in enumerate(masks):
        mask.save(root / f"m{i}.png")
    return root, save_shape(SHAPES["two_levels"], root / "model")


def test_a_base_model_of_another_depth_learns_and_synthesises_with_defaults(
    two_levels, tmp_path, capsys
):
    root, model = two_levels
    concept, out = tmp_path / "concept", tmp_path / "images"
    learn = ["learn", str(root / "scene.png"), str(root / "m0.png"), str(root / "m1.png")]
    steps = ["--phase1-steps", "2", "--phase2-steps", "1", "--device", "cpu"]
    assert main([*learn, "--model", str(model), "--out", str(concept), *steps]) == 0
    synth = ["synthesize", str(concept), "--prompt", "a photo of <asset0> and <asset1>"]
    boxes = ["--box", "<asset0>=0,0,0.5,1", "--box", "<asset1>=0.5,0,1,1"]
    assert main([*synth, *boxes, "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"images written to {out}"


def test_a_config_naming_layers_the_model_lacks_is_refused_before_loading(
    two_levels, tmp_path, capsys, monkeypatch
):
    root, model = two_levels

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr("mifo_engine.models.load_base_model", refuse)
    config = tmp_path / "learn.json"
    config.write_text('{"attn_loss_resolutions": [16, 64]}')
    learn = ["learn", str(root / "scene.png"), str(root / "m0.png"), "--model", str(model)]
    code = main([*learn, "--config", str(config), "--out", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'attn_loss_resolutions' names up 64" in err and "up 16 (8x8), 32 (16x16)" in err
    assert "loaded before" not in err and not (tmp_path / "c").exists()
