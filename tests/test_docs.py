"""The README and docs/ stay true: links resolve, the settings tables match `Settings`, every
command shown parses, and the examples that can run do."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
CONFIGURATION = DOCS / "configuration.md"
SERVICE = DOCS / "service.md"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SETTING_ROW = re.compile(r"^\| `MIFO_([A-Z0-9_]+)` \| (.*?) \| (.*) \|$", re.M)
# Set by `mifo serve` / `--host` for the processes a command starts, not by hand: the page
# explains them below the tables instead of giving them rows.
SET_BY_COMMANDS = {"embedded", "bind_host"}


def _blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def _prose(text: str) -> str:
    """The text without its fenced code blocks (a link inside code is not a link)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(path.read_text()), re.M):
        slug, n = _slug(heading), 1
        while slug in found:  # a repeated heading gets -1, -2, ...
            slug, n = f"{_slug(heading)}-{n}", n + 1
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_code_map_has_a_line_for_every_service_module() -> None:
    text = (DOCS / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for package in ("api", "core", "worker")
        for path in sorted((ROOT / package).glob("*.py"))
        if path.name != "__init__.py" and f"](../{package}/{path.name})" not in text
    ]
    assert not missing, f"docs/architecture.md, Code map: add a line for {missing}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = README.read_text()
    unlinked = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name}" not in readme]
    assert not unlinked, f"link {unlinked} from the README's Documentation table"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines: move reference text to docs/"
    assert lines[0].startswith("# ")
    # After the title, one paragraph and the picture, the first section is the set-up and the
    # first code block in the file is the two commands, in this order, nothing else.
    assert re.findall(r"^## (.+)$", text, re.M)[0] == "Set-up"
    first = FENCE.search(text)
    assert first is not None and first.group(1) == "bash"
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines()]
    assert commands == ["make serve", "make test"]
    before = text[: first.start()]
    assert before.count("\n## ") == 1 and before.index("## Set-up") > before.index("](docs/")
    assert text[: first.start()].count("\n") < 40


def test_make_serve_and_make_test_do_what_the_readme_says() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(
        r"^serve: install\n\t\$\(BIN\)/mifo serve --host \$\(HOST\) --port \$\(PORT\)$",
        makefile,
        re.M,
    )
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.M)  # loopback unless asked
    assert re.search(
        r"^test: install\n\t\$\(BIN\)/python -m pytest -n 2 --dist loadfile$", makefile, re.M
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# --- the settings tables ------------------------------------------------------------------

# Rows whose default is not one literal, and why (every other row must be one literal, equal
# to `Settings.model_fields[name].default`):
DEFAULT_EXEMPT = {
    # computed from other settings when unset (`Settings._fill_embedded_defaults`, `redis_url`)
    "database_url": "sqlite:///<data>/mifo.db",
    "storage_url": "file://<data>/objects",
    "events_url": "the broker, when it is Redis",
    "rate_limit_url": "MIFO_EVENTS_URL",
    # unset: the client library's or the process' own choice
    "s3_endpoint_url": "AWS",
    "s3_public_endpoint_url": "the endpoint",
    "url_signing_key": "random, in `<data>/url-signing.key`",
    "metrics_token": "unset (open)",
    # a hub id pinned to a 40-digit revision: the row names the constant that holds it
    "base_model": "DEFAULT_BASE_MODEL",
    "segment_model": "DEFAULT_SEGMENT_MODEL",
    # `filesystem://` is the default; the folder it uses (`broker_folder`) is derived
    "broker_url": "in `<data>/broker`",
}


def _table() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for env, default, meaning in SETTING_ROW.findall(CONFIGURATION.read_text()):
        name = env.lower()
        assert name not in rows, f"MIFO_{env} has two rows in docs/configuration.md"
        rows[name] = (default.strip(), meaning.strip())
    return rows


def test_every_setting_is_documented_in_configuration_md() -> None:
    from core.settings import Settings

    rows = _table()
    missing = [n for n in Settings.model_fields if n not in SET_BY_COMMANDS and n not in rows]
    assert not missing, f"add rows for {missing} to docs/configuration.md"
    stale = [f"MIFO_{n.upper()}" for n in rows if n not in Settings.model_fields]
    assert not stale, f"docs/configuration.md lists settings that no longer exist: {stale}"
    listed = [n for n in SET_BY_COMMANDS if n in rows]
    assert not listed, f"{listed} are set by the commands: explain them, give them no row"
    text = CONFIGURATION.read_text()
    assert all(f"`MIFO_{n.upper()}`" in text for n in SET_BY_COMMANDS)


def _same(literal: str, default: Any) -> bool:
    if isinstance(default, bool):
        return literal == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(literal) == float(default)
        except ValueError:
            return False
    if isinstance(default, list):
        try:
            return bool(json.loads(literal) == default)
        except ValueError:
            return False
    return literal == str(default)  # str, Path, Literal


def test_defaults_in_configuration_md_are_the_settings_defaults() -> None:
    from core.settings import Settings

    wrong = []
    for name, (cell, _) in _table().items():
        if name not in Settings.model_fields:
            continue  # reported by the test above
        if name in DEFAULT_EXEMPT:
            assert DEFAULT_EXEMPT[name] in cell, f"MIFO_{name.upper()}: {cell!r}"
            continue
        literal = re.fullmatch(r"`([^`]*)`(?: \(.*\))?", cell)
        default = Settings.model_fields[name].default
        if literal is None:
            wrong.append(f"MIFO_{name.upper()}: write the default as one `literal`: {cell!r}")
        elif not _same(literal.group(1), default):
            wrong.append(f"MIFO_{name.upper()}: the page says {cell}, Settings says {default!r}")
    assert not wrong, wrong


# --- commands and examples ----------------------------------------------------------------

SEPARATORS = {";", "&&", "||", "|", "(", ")", "&"}


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block, each as its words (env assignments dropped)."""
    found: list[list[str]] = []
    pending = ""
    for line in block.replace("\\\n", " ").splitlines(keepends=True):
        pending += line
        try:
            words = _words(pending)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        pending = ""
        current: list[str] = []
        for token in [*words, ";"]:
            if token in SEPARATORS:
                kept = [w for w in current if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]
                if kept:
                    found.append(kept)
                current = []
            else:
                current.append(token)
    assert not pending, f"unclosed quote in: {pending!r}"
    return found


def _shown_commands() -> list[tuple[str, list[str]]]:
    return [
        (page.name, words)
        for page in PAGES
        for block in _blocks(page, "bash")
        for words in _commands(block)
    ]


def test_every_mifo_command_shown_parses() -> None:
    from mifo_cli import build_parser

    bad = []
    for page, words in _shown_commands():
        if words[0] != "mifo":
            continue
        try:
            build_parser().parse_args(words[1:])
        except SystemExit:
            bad.append(f"{page}: {shlex.join(words)}")
    assert not bad, f"commands that `mifo` refuses: {bad}"


def test_every_make_target_and_test_path_shown_exists() -> None:
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    bad = []
    for page, words in _shown_commands():
        if words[0] == "make" and not set(words[1:]) <= targets:
            bad.append(f"{page}: {shlex.join(words)}")
        for word in words:
            if word.startswith("tests/"):
                path, _, test = word.partition("::")
                if not (ROOT / path).exists():
                    bad.append(f"{page}: no {path}")
                elif test and f"def {test}(" not in (ROOT / path).read_text():
                    bad.append(f"{page}: no {test} in {path}")
    assert not bad, bad


def test_the_tour_scene_snippet_makes_an_image_and_its_masks(tmp_path: Path) -> None:
    from PIL import Image

    [block] = [b for b in _blocks(README, "bash") if b.startswith(".venv/bin/python -c")]
    [words] = _commands(block)
    subprocess.run([sys.executable, "-c", words[2]], cwd=tmp_path, check=True, timeout=60)
    scene = Image.open(tmp_path / "scene.png")
    for name in ("mask0.png", "mask1.png"):  # the names the curl calls upload
        mask = Image.open(tmp_path / name)
        assert mask.size == scene.size and mask.getextrema() == (0, 255)
    assert "masks=@mask0.png -F masks=@mask1.png" in README.read_text()


def test_the_webhook_receiver_snippet_verifies_the_service_signature() -> None:
    from core.webhooks import sign

    [snippet] = [b for b in _blocks(SERVICE, "python") if "def verify(" in b]
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # noqa: S102 - our own docs
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    body = json.dumps({"type": "job.completed", "data": {}}).encode()
    stamp = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, "msg_1", stamp, body),
    }
    assert scope["verify"](secret, headers, body)["type"] == "job.completed"
    with pytest.raises(ValueError, match="bad signature"):
        scope["verify"](secret, headers, body + b" ")


def test_the_cost_caps_in_service_md_are_the_api_caps() -> None:
    from api.checks.costs import LEARN_CAPS, SYNTHESIS_CAPS

    text = SERVICE.read_text()
    missing = [
        f"{name} <= {limit}"
        for name, (limit, _) in {**LEARN_CAPS, **SYNTHESIS_CAPS}.items()
        if not re.search(rf"\| `{name}`[^|]*\| {limit} \|", text)
    ]
    assert not missing, f"docs/service.md, Limits: the caps table lacks {missing}"


def test_the_problem_types_in_service_md_are_the_catalogue() -> None:
    from core.problems import TYPES

    text = (DOCS / "service.md").read_text()
    section = text.split("## Problem types", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    expected = [
        f"| `{t.code}` | {t.status if t.status is not None else 'varies'} | {t.title} | "
        f"{t.action} |"
        for t in TYPES
    ]
    assert rows == expected, "regenerate the table in docs/service.md from core/problems.py"
