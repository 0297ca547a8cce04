"""A learned concept in the formats plain diffusers loads: textual-inversion embeddings, LoRA
weights (or full weights) and a README with the loading code.

Torch-free (safetensors on NumPy arrays), so that the HTTP front end, which has no torch,
can build the archive. Peft's and diffusers' own helpers (`get_peft_model_state_dict`,
`save_lora_weights`) need torch and a model carrying the adapters; the key change they make
(dropping the adapter name) is one substitution, and the tests check the result against them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conceptfile import read_metadata
from .config import SynthesisConfig
from .errors import ConceptError
from .sources import BUILTIN_SPECS

README = "README.md"
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights looks for
FULL_FILES = {"unet": "unet.safetensors", "text_encoder": "text_encoder.safetensors"}
# The modules patching.lora_adapters wraps; diffusers builds the same LoraConfig from them.
LORA_TARGETS = {
    "unet": ["to_q", "to_k", "to_v", "to_out.0"],
    "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
}
# "x.lora_A.<adapter>.weight" (a model's own parameter names) -> "x.lora_A.weight" (peft's
# saved state dicts, which diffusers reads)
_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.")
_WITHOUT_ADAPTER = r".\1."
TOKEN_TABLE = "embeddings.token_embedding.weight"
_META = "lora_adapter_metadata"  # diffusers' key for the LoraConfig in a file's metadata
ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # every member's timestamp: the archive's bytes are the concept's


@dataclass(frozen=True)
class Export:
    """What `export_concept` wrote: the files (relative to the folder), tokens and base."""

    folder: Path
    files: list[str]
    tokens: dict[str, str]  # token -> instance name
    base_model: dict[str, Any]
    adaptation: str


def export_concept(concept_dir: str | Path, folder: str | Path) -> Export:
    """Write a concept directory (`Concept.save`) as diffusers files into the new `folder`."""
    source, target = Path(concept_dir), Path(folder)
    meta = read_metadata(source)
    target.mkdir(parents=True)
    try:
        members = _members(source, meta, target)
        for name, path in members.items():
            if path != target / name:  # a stored file that goes out unchanged
                shutil.copyfile(path, target / name)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # nothing half-written stays
        raise
    return _export(target, meta, members)


def export_archive(concept_dir: str | Path, archive: str | Path) -> Export:
    """`export_concept` packed as one zip file at `archive` (weights stored, text deflated).

    The same concept gives the same bytes: members in name order, one fixed timestamp, and
    safetensors headers in a fixed order. Stored files that go out unchanged are read from
    the concept directory itself; only the converted ones are written to a temporary folder."""
    source = Path(concept_dir)
    meta = read_metadata(source)
    with tempfile.TemporaryDirectory(prefix="mifo-export-") as tmp:
        members = _members(source, meta, Path(tmp))
        with zipfile.ZipFile(archive, "w", allowZip64=True) as zf:
            for name, path in members.items():
                _add(zf, name, path)
    return _export(Path(archive), meta, members)


def _export(folder: Path, meta: Mapping[str, Any], members: Mapping[str, Path]) -> Export:
    return Export(
        folder=folder,
        files=list(members),
        tokens={t["token"]: t["name"] for t in meta["tokens"]},
        base_model=meta["base_model"],
        adaptation=meta["adaptation"],
    )


def _members(source: Path, meta: Mapping[str, Any], target: Path) -> dict[str, Path]:
    """The export's files by name, in name order: converted ones written under `target`,
    stored ones that need no change as their path in `source`."""
    members = {name: target / name for name in _embeddings(source, meta, target)}
    if meta["adaptation"] == "lora":
        members[LORA_FILE] = target / _lora(source, meta, target)
    elif meta["adaptation"] == "full":
        members[FULL_FILES["unet"]] = _path(source, meta, "unet")
        members[FULL_FILES["text_encoder"]] = _text_encoder_without_table(
            _path(source, meta, "text_encoder"), target
        )
    (target / "concept.json").write_text(json.dumps(meta, indent=2))
    (target / README).write_text(readme(meta), encoding="utf-8")
    members |= {"concept.json": target / "concept.json", README: target / README}
    return dict(sorted(members.items()))


def _add(zf: zipfile.ZipFile, name: str, path: Path) -> None:
    """One member with the fixed timestamp, copied from `path` in chunks."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = (
        zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
    )
    info.external_attr = 0o644 << 16  # a plain file, -rw-r--r--
    info.file_size = path.stat().st_size  # zipfile decides on zip64 by it
    with path.open("rb") as src, zf.open(info, "w") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _save(tensors: Mapping[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file` with the header's metadata in key order: the writer keeps it
    in a hash map and lays it out in a new order each call, with no option for a fixed one,
    so the header is written again, sorted, in the same bytes (padded with spaces)."""
    from safetensors.numpy import save_file

    save_file(dict(tensors), path, metadata=metadata)
    if not metadata:
        return
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))  # the tensors' entries keep their order
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # always, but for JSON escaped otherwise than serde_json does
            f.seek(8)
            f.write(text.ljust(size))
            return
        data = f.read()
        text += b" " * (-len(text) % 8)  # the format aligns the tensors to 8 bytes
        f.seek(0)
        f.write(len(text).to_bytes(8, "little") + text + data)


def embedding_file(token: str) -> str:
    """Where a token's embedding goes: `embeddings/asset0.safetensors` for `<asset0>`."""
    return f"embeddings/{token.strip('<>').replace('/', '_')}.safetensors"


def _path(source: Path, meta: Mapping[str, Any], part: str) -> Path:
    path = source / meta["files"][part]
    if not path.is_file():
        raise ConceptError(
            f"Concept at {source} is incomplete: {meta['files'][part]} is missing.",
            field="concept",
            fix="learn the concept again",
        )
    return path


def _embeddings(source: Path, meta: Mapping[str, Any], target: Path) -> list[str]:
    """One diffusers textual-inversion file per token: {token: (D,)}."""
    from safetensors.numpy import load_file

    rows = load_file(_path(source, meta, "embeddings"))
    (target / "embeddings").mkdir()
    names = []
    for t in meta["tokens"]:
        name = embedding_file(t["token"])
        _save({t["token"]: rows[t["token"]]}, target / name)
        names.append(name)
    return names


def _lora(source: Path, meta: Mapping[str, Any], target: Path) -> str:
    """The UNet and text-encoder adapters in one file, keyed as `save_lora_weights` writes
    them, with the LoraConfig in the metadata (so a lora_alpha other than the rank holds)."""
    from safetensors.numpy import load_file

    cfg = meta["config"]
    state: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for part, targets in LORA_TARGETS.items():
        for key, value in load_file(_path(source, meta, part)).items():
            state[f"{part}.{_ADAPTER_NAME.sub(_WITHOUT_ADAPTER, key, count=1)}"] = value
        lora = {"r": cfg["lora_rank"], "lora_alpha": cfg["lora_alpha"], "target_modules": targets}
        config |= {f"{part}.{k}": v for k, v in lora.items()}
    metadata = {"format": "pt", _META: json.dumps(config, indent=2, sort_keys=True)}
    _save(state, target / LORA_FILE, metadata)
    return LORA_FILE


def _text_encoder_without_table(path: Path, target: Path) -> Path:
    """The full text-encoder weights but the token table: a concept may hold the table with
    its tokens' rows (its key lost the `text_model.` prefix in transformers 5), and a table
    of another size would not load; load_textual_inversion adds the rows instead. The stored
    file itself when it holds no table."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        keys = [k for k in f.keys() if not k.endswith(TOKEN_TABLE)]  # noqa: SIM118
        if len(keys) == len(f.keys()):  # noqa: SIM118
            return path
        state = {k: f.get_tensor(k) for k in keys}
    _save(state, target / FULL_FILES["text_encoder"], {"format": "pt"})
    return target / FULL_FILES["text_encoder"]


def readme(meta: Mapping[str, Any]) -> str:
    """The archive's README.md: tokens, base model and the diffusers code that loads them."""
    base = meta["base_model"]
    tokens = [t["token"] for t in meta["tokens"]]
    rows = "\n".join(f"| `{t['token']}` | {t['name']} |" for t in meta["tokens"])
    prompt = f"{meta['config']['prompt_prefix']} " + " and ".join(tokens)
    revision = f"`{base['revision']}`" if base["revision"] else "none recorded"
    versions = meta.get("versions", {})
    used = ", ".join(
        f"{k} {versions[k]}"
        for k in ("diffusers", "transformers", "peft", "torch")
        if k in versions
    )
    builtin = (
        f"\n`{base['id']}` is a built-in random model of MIFO, not on the hub: write it as a "
        "diffusers folder with `mifo_engine.models.save_base_model` and set `BASE_MODEL` to it.\n"
        if base["spec"] in BUILTIN_SPECS
        else ""
    )
    return f"""# A MIFO concept for diffusers

- Base model: `{base["id"]}`, revision {revision}
- Base weights (sha256 of the state dicts): `{base["weights_hash"]}`
- Fine-tune: {meta["adaptation"]}
- Learned with: {used}

Each token stands for one instance of the learning image:

| token | instance |
|---|---|
{rows}
{builtin}
Load it with plain diffusers (`pip install diffusers transformers safetensors torch`), in the
folder this archive was unpacked to:

```python
{_code(meta, prompt)}
```

This is MIFO's synthesis with box control off: DDIM on the base model's noise schedule,
MIFO's default steps and guidance scale, an empty negative prompt, the starting noise drawn
by a CPU generator of the seed. In float32 on the CPU it draws, pixel for pixel, the image
of a MIFO synthesis of the same prompt and seed with `box_control: false` (on one thread; on
more, a few pixels may round one level apart). Boxes (bounded attention) need the MIFO
service or `mifo synthesize`. `concept.json` is the concept's record: config, diagnostics,
versions.
"""


def _code(meta: Mapping[str, Any], prompt: str) -> str:
    base, plain = meta["base_model"], SynthesisConfig()
    transformers = meta.get("versions", {}).get("transformers", "as in concept.json")
    files = [embedding_file(t["token"]) for t in meta["tokens"]]
    lines = [
        "import torch",
        "from diffusers import DDIMScheduler, StableDiffusionPipeline",
        *(["from safetensors.torch import load_file"] if meta["adaptation"] == "full" else []),
        "",
        f"BASE_MODEL = {json.dumps(base['id'])}",
        f"REVISION = {json.dumps(base['revision']) if base['revision'] else None}",
        "pipe = StableDiffusionPipeline.from_pretrained(BASE_MODEL, revision=REVISION)",
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)",
    ]
    if meta["adaptation"] == "full":
        lines += [
            f'pipe.unet.load_state_dict(load_file("{FULL_FILES["unet"]}"))',
            "# every text-encoder weight but the token table, which load_textual_inversion extends",
            "missing, unexpected = pipe.text_encoder.load_state_dict(",
            f'    load_file("{FULL_FILES["text_encoder"]}"), strict=False',
            ")",
            "assert len(missing) == 1 and not unexpected, "
            f'"the text encoder\'s keys differ: use transformers {transformers}"',
        ]
    lines.append(f"pipe.load_textual_inversion({json.dumps(files)})")
    if meta["adaptation"] == "lora":
        lines.append(f'pipe.load_lora_weights(".", weight_name="{LORA_FILE}")')
    lines += [
        "image = pipe(",
        f"    {json.dumps(prompt)},",
        f"    num_inference_steps={plain.steps},",
        f"    guidance_scale={plain.guidance_scale},",
        f"    height={meta['resolution']},",
        f"    width={meta['resolution']},",
        f'    generator=torch.Generator("cpu").manual_seed({plain.seed}),',
        ").images[0]",
        'image.save("image.png")',
    ]
    return "\n".join(lines)
