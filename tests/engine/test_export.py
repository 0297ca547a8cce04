"""The export: plain diffusers loads it and draws the engine's own images, bit for bit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from mifo_engine.concept import Concept
from mifo_engine.config import LearnConfig, SynthesisConfig
from mifo_engine.errors import ConceptError
from mifo_engine.export import (
    LORA_FILE,
    README,
    TOKEN_TABLE,
    ZIP_TIME,
    embedding_file,
    export_archive,
    export_concept,
)
from mifo_engine.learning import learn
from mifo_engine.models import save_base_model
from mifo_engine.synthesis import synthesize

ROOT = Path(__file__).resolve().parents[2]
# Phase 2 with rates high enough that its weights change the image (else a missing LoRA
# would go unnoticed), and a lora_alpha other than the rank (the adapter scale must travel).
QUICK = dict(phase1_steps=2, reward_steps=1, phase2_steps=2, diagnostic_timesteps=(100,))
MODES = {
    "lora": LearnConfig(**QUICK, lora_rank=4, lora_alpha=8, phase2_lora_lr=3e-2),
    "full": LearnConfig(**QUICK, phase2_mode="full", phase2_lr=1e-3),
    "none": LearnConfig(**QUICK, phase2=False),
}
PROMPT = "a photo of <asset0> and <asset1> on a table"
BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8]}


@pytest.fixture(scope="module")
def concepts(tiny_base, scene, tmp_path_factory) -> dict[str, Path]:
    """A saved concept per fine-tune mode."""
    image, masks = scene
    root = tmp_path_factory.mktemp("concepts")
    return {
        mode: learn(tiny_base, image, masks, names=["left toy", "right toy"], config=cfg).save(
            root / mode
        )
        for mode, cfg in MODES.items()
    }


@pytest.fixture(scope="module")
def tiny_dir(tiny_base, tmp_path_factory) -> Path:
    """The tiny base model as a diffusers directory."""
    return save_base_model(tiny_base, tmp_path_factory.mktemp("tiny") / "model")


def _pipeline(tiny_dir: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_export(pipe, folder: Path, adaptation: str) -> None:
    """What a diffusers user does with the archive (the README's code, by hand)."""
    if adaptation == "full":
        pipe.unet.load_state_dict(load_file(folder / "unet.safetensors"))
        missing, unexpected = pipe.text_encoder.load_state_dict(
            load_file(folder / "text_encoder.safetensors"), strict=False
        )
        assert not unexpected and [k.endswith(TOKEN_TABLE) for k in missing] == [True]
    pipe.load_textual_inversion([str(folder / embedding_file(t)) for t in ("<asset0>", "<asset1>")])
    if adaptation == "lora":
        pipe.load_lora_weights(folder, weight_name=LORA_FILE)


def _draw(pipe, prompt: str, cfg: SynthesisConfig, size: int) -> np.ndarray:
    image = pipe(
        prompt,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        negative_prompt=cfg.negative_prompt or None,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(cfg.seed),
    ).images[0]
    return np.asarray(image)


@pytest.mark.parametrize("mode", list(MODES))
def test_diffusers_draws_the_engines_image_from_the_export(
    mode, concepts, tiny_base, tiny_dir, tmp_path
) -> None:
    concept = Concept.load(concepts[mode])
    done = export_concept(concepts[mode], tmp_path / "export")
    assert done.adaptation == mode
    assert done.tokens == {"<asset0>": "left toy", "<asset1>": "right toy"}
    cfg = SynthesisConfig(steps=4, seed=11, box_control=False)
    engine = np.asarray(synthesize(tiny_base, concept, PROMPT, BOXES, config=cfg).images[0])

    pipe = _pipeline(tiny_dir)
    _load_export(pipe, done.folder, mode)
    exported = _draw(pipe, PROMPT, cfg, concept.resolution)
    assert exported.shape == engine.shape == (64, 64, 3)
    # The same image, to the rounding of the last step: the two code paths may round a value
    # that sits on a half level differently (seen: 1 level on 2 of 12288 values, `none`, with
    # numpy 2.4 and pillow 13). A wrong token, weight or step moves thousands of values.
    diff = np.abs(exported.astype(int) - engine.astype(int))
    assert diff.max() <= 1 and (diff > 0).sum() <= diff.size // 1000, (
        f"max diff {diff.max()} at {int((diff > 0).sum())} of {diff.size} values"
    )

    if mode != "none":  # the fine-tuned weights matter: the tokens alone draw another image
        plain = _pipeline(tiny_dir)
        _load_export(plain, done.folder, "none")
        assert not np.array_equal(_draw(plain, PROMPT, cfg, concept.resolution), engine)


@pytest.mark.parametrize("mode", list(MODES))
def test_the_readme_code_runs_and_draws_the_engines_image(
    mode, concepts, tiny_base, tiny_dir, tmp_path
) -> None:
    archive = export_archive(concepts[mode], tmp_path / "concept.zip")
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(archive.folder) as zf:
        zf.extractall(folder)
    text = (folder / README).read_text()
    assert "| `<asset0>` | left toy |" in text and "| `<asset1>` | right toy |" in text
    assert f"- Fine-tune: {mode}" in text and "`tiny` is a built-in random model" in text
    assert f"diffusers {diffusers.__version__}, transformers {transformers.__version__}" in text
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code, swapped = re.subn(
        r"^BASE_MODEL = .*$", f"BASE_MODEL = {str(tiny_dir)!r}", code, flags=re.M
    )
    assert swapped == 1
    (folder / "load.py").write_text(code)
    # On as many threads as this process draws with: a CPU kernel's sums on another thread
    # count may round a pixel apart.
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run(
        [sys.executable, "load.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | threads,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    from PIL import Image

    drawn = np.asarray(Image.open(folder / "image.png").convert("RGB"))
    # the README's call: the synthesis defaults, no boxes, its prompt (with boxes and box
    # control off, the engine's explicit attention for the in-box shares may round a pixel
    # apart over 50 steps: the test above covers that case on a short run)
    prompt = re.search(r'^    "(.*)",$', code, flags=re.M)
    assert prompt is not None and prompt.group(1) == "a photo of <asset0> and <asset1>"
    result = synthesize(tiny_base, Concept.load(concepts[mode]), prompt.group(1), None)
    assert np.array_equal(drawn, np.asarray(result.images[0]))


def test_the_lora_file_is_what_diffusers_save_lora_weights_writes(
    concepts, tiny_base, tmp_path
) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    from mifo_engine.patching import ADAPTER

    concept = Concept.load(concepts["lora"])
    ours = export_concept(concepts["lora"], tmp_path / "export").folder / LORA_FILE
    with concept.applied(tiny_base):
        StableDiffusionPipeline.save_lora_weights(
            tmp_path / "diffusers",
            unet_lora_layers=get_peft_model_state_dict(tiny_base.unet, adapter_name=ADAPTER),
            text_encoder_lora_layers=get_peft_model_state_dict(
                tiny_base.text_encoder, adapter_name=ADAPTER
            ),
        )
    theirs = load_file(tmp_path / "diffusers" / LORA_FILE)
    mine = load_file(ours)
    assert sorted(mine) == sorted(theirs) and len(mine) > 0
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    with safe_open(ours, "pt") as f:
        assert '"unet.lora_alpha": 8' in f.metadata()["lora_adapter_metadata"]


def test_the_archive_holds_the_listed_files(concepts, tmp_path) -> None:
    done = export_archive(concepts["full"], tmp_path / "c.zip")
    with zipfile.ZipFile(done.folder) as zf:
        names = zf.namelist()
        weights = zf.getinfo("unet.safetensors")
    assert names == done.files == sorted(names)
    assert set(names) == {
        README,
        "concept.json",
        "embeddings/asset0.safetensors",
        "embeddings/asset1.safetensors",
        "unet.safetensors",
        "text_encoder.safetensors",
    }
    assert weights.compress_type == zipfile.ZIP_STORED
    assert weights.file_size == (concepts["full"] / "unet_full.safetensors").stat().st_size


def test_an_archive_is_the_same_bytes_every_time(concepts, tmp_path) -> None:
    first = {m: export_archive(concepts[m], tmp_path / f"{m}-1.zip").folder for m in MODES}
    time.sleep(2.1)  # the zip format's clock ticks in 2 seconds: a file's own time would show
    for mode, archive in first.items():
        again = export_archive(concepts[mode], tmp_path / f"{mode}-2.zip").folder
        assert again.read_bytes() == archive.read_bytes(), mode
        with zipfile.ZipFile(again) as zf:
            assert {i.date_time for i in zf.infolist()} == {ZIP_TIME}
    with zipfile.ZipFile(first["lora"]) as zf:
        data = zf.read(LORA_FILE)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == ["format", "lora_adapter_metadata"]


def test_an_unchanged_stored_file_is_packed_from_the_concept_itself(concepts, tmp_path) -> None:
    """The full UNet goes out as stored: read from the concept directory, not a copy."""
    stored = concepts["full"] / "unet_full.safetensors"
    opened: list[str] = []
    real_open = Path.open

    def tracked(self: Path, *args, **kwargs):
        opened.append(str(self))
        return real_open(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "open", tracked)
        done = export_archive(concepts["full"], tmp_path / "c.zip")
    assert str(stored) in opened
    assert not [p for p in opened if p.endswith("/unet.safetensors")]  # no copy made
    with zipfile.ZipFile(done.folder) as zf:
        assert zf.read("unet.safetensors") == stored.read_bytes()


def test_the_export_needs_no_torch(concepts, tmp_path) -> None:
    script = (
        "import sys; from mifo_engine.export import export_archive; "
        f"export_archive({str(concepts['lora'])!r}, {str(tmp_path / 'c.zip')!r}); "
        "heavy = [m for m in ('torch', 'diffusers', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "c.zip").stat().st_size > 0


def test_a_broken_concept_directory_is_refused(concepts, tmp_path) -> None:
    with pytest.raises(ConceptError) as no_meta:
        export_concept(tmp_path, tmp_path / "out")
    assert no_meta.value.field == "concept" and "concept.json" in str(no_meta.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "concept.json").write_text((concepts["lora"] / "concept.json").read_text())
    with pytest.raises(ConceptError) as missing:
        export_concept(broken, tmp_path / "out2")
    assert "embeddings.safetensors is missing" in str(missing.value)
    assert missing.value.fix == "learn the concept again"


def test_without_boxes_the_images_agree_on_two_threads_too(
    concepts, tiny_base, tiny_dir, tmp_path
) -> None:
    """With box control off the engine still computes the attention of the diagnostics
    layers explicitly (for the in-box shares), and on two threads that may round a pixel
    apart from the fused kernel diffusers runs; without boxes the two paths are the same."""
    concept = Concept.load(concepts["lora"])
    done = export_concept(concepts["lora"], tmp_path / "export")
    cfg = SynthesisConfig(steps=4, seed=11)
    pipe = _pipeline(tiny_dir)
    _load_export(pipe, done.folder, "lora")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = np.asarray(synthesize(tiny_base, concept, PROMPT, None, config=cfg).images[0])
        exported = _draw(pipe, PROMPT, cfg, concept.resolution)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(exported, engine)
