"""Free text and free-form JSON: names, prompt and options are bounded and printable; each
breach is a 422 naming the field and the fix, and nothing is stored."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.checks.inputs import MAX_OPTIONS_BYTES, MAX_OPTIONS_DEPTH
from core.webhooks import UnsafeTarget, check_url
from tests.helpers.factories import make_concept, scene

from .test_limits import _post, _problem, _stored

BOX = {"<asset0>": [0.1, 0.1, 0.5, 0.5]}
# A NUL, a right-to-left override, an isolate, a mark, a line break, DEL and a C1 control.
BAD = ["\x00", "\u202e", "\u2066", "\u200f", "\n", "\x7f", "\x9b"]


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


def nested(levels: int) -> Any:
    """Options with `levels` arrays and objects nested in all (the options object included)."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"init_words": value} if levels > 1 else {}


def test_learning_options_are_bounded_in_depth_and_size(
    client: TestClient, session: Session
) -> None:
    image, masks = scene()
    for options in (
        "[" * 1000 + "]" * 1000,  # deeper than Python's JSON parser goes: a 500 before
        '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
        json.dumps(nested(MAX_OPTIONS_DEPTH + 1)),
    ):
        body = _problem(_post(client, image, masks, options=options), 422, "options")
        assert str(MAX_OPTIONS_DEPTH) in body["fix"], body
    big = json.dumps({"init_words": ["w" * 100] * (MAX_OPTIONS_BYTES // 100)})
    body = _problem(_post(client, image, masks, options=big), 422, "options")
    assert str(MAX_OPTIONS_BYTES) in body["detail"]
    assert _stored(session) == 0
    # At the limit the depth check passes: the engine judges the fields.
    r = _post(client, image, masks, options=json.dumps(nested(MAX_OPTIONS_DEPTH)))
    assert _problem(r, 422, "options.init_words")["fix"]
    ok = _post(client, image, masks, options='{"diagnostic_timesteps": [100], "seed": 2}')
    assert ok.status_code == 202, ok.text


def test_synthesis_options_are_bounded_in_depth_and_size(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    body: dict[str, Any] = {"prompt": "<asset0>", "boxes": BOX}
    r = client.post(url, json={**body, "options": nested(MAX_OPTIONS_DEPTH + 1)})
    assert str(MAX_OPTIONS_DEPTH) in _problem(r, 422, "options")["fix"]
    r = client.post(url, json={**body, "options": {"filler_words": ["w" * 100] * 200}})
    assert str(MAX_OPTIONS_BYTES) in _problem(r, 422, "options")["detail"]
    # Too deep for the JSON parser itself (a 400 "error parsing the body" before).
    raw = json.dumps(body)[:-1] + ', "options": {"a": ' + "[" * 3000 + "]" * 3000 + "}}"
    r = client.post(url, content=raw, headers={"content-type": "application/json"})
    assert str(MAX_OPTIONS_DEPTH) in _problem(r, 422, "body")["fix"]
    assert _stored(session) == 1  # the concept only
    ok = client.post(url, json={**body, "options": {"loss_layers": [["mid", 8]]}})
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize("char", BAD)
def test_control_and_bidi_characters_are_refused_in_the_prompt(
    client: TestClient, session: Session, char: str
) -> None:
    concept = make_concept(session)
    session.commit()
    r = client.post(
        f"/v1/concepts/{concept.id}/syntheses",
        json={"prompt": f"<asset0> on{char} a beach", "boxes": BOX},
    )
    body = _problem(r, 422, "prompt")
    assert f"U+{ord(char):04X}" in body["detail"] and "control" in body["fix"], body
    assert _stored(session) == 1


@pytest.mark.parametrize("char", BAD)
def test_control_and_bidi_characters_are_refused_in_names(
    client: TestClient, session: Session, char: str
) -> None:
    image, masks = scene()
    body = _problem(_post(client, image, masks, names=f"left,ri{char}ght"), 422, "names[1]")
    assert f"U+{ord(char):04X}" in body["detail"] and "bidirectional" in body["fix"]
    assert _stored(session) == 0


def test_names_are_bounded_one_by_one_and_together(client: TestClient, session: Session) -> None:
    image, masks = scene()
    body = _problem(_post(client, image, masks, names="a" * 500_000), 422, "names")
    assert "MIFO_MAX_NAMES_CHARS" in body["fix"] and "1000" in body["detail"]
    body = _problem(_post(client, image, masks, names="car," + "b" * 101), 422, "names[1]")
    assert "MIFO_MAX_NAME_CHARS" in body["fix"] and "100" in body["fix"]
    assert _stored(session) == 0
    r = _post(client, image, masks, names=" red car , " + "b" * 100)
    assert r.status_code == 202, r.text
    assert [t["name"] for t in r.json()["concept"]["tokens"]] == ["red car", "b" * 100]


def test_the_learning_upload_schema_asks_for_a_mask(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    content = schema["paths"]["/v1/concepts"]["post"]["requestBody"]["content"]
    ref = content["multipart/form-data"]["schema"]["$ref"]
    form = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert form["properties"]["masks"]["minItems"] == 1
    assert "masks" in form["required"]


def test_a_wrong_method_answers_405_with_allow(client: TestClient) -> None:
    r = client.put("/v1/concepts")
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"] == "GET, POST"  # both routes at the path, not the first one
    assert "GET or POST" in r.json()["fix"]
    r = client.post("/v1/jobs/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 405 and "GET" in r.headers["allow"].split(", ")
    assert client.delete("/healthz").headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b:1::a00:1", False),
        ("64:ff9b:1::7f00:1", False),
        ("64:ff9b:1::c0a8:105", False),
        ("64:ff9b:1:ab::a9fe:a9fe", False),
        ("64:ff9b::a00:1", False),
        ("64:ff9b:1::5db8:d822", True),
        ("64:ff9b::5db8:d822", True),
    ],
)
def test_nat64_addresses_are_judged_by_their_ipv4(
    monkeypatch: pytest.MonkeyPatch, address: str, public: bool
) -> None:
    """The well-known prefix and the local-use one (64:ff9b:1::/48, RFC 8215)."""
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(10, 1, 6, "", (address, 80, 0, 0))]
    )
    if public:
        assert str(check_url("http://nat64.example/hook", [])) == address
    else:
        with pytest.raises(UnsafeTarget, match="private, loopback or link-local"):
            check_url("http://nat64.example/hook", [])
