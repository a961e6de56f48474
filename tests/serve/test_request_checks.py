"""The request checks: the pure decisions, then the middleware on a real FastAPI app (vLLM's
pydantic-in-lax-mode behaviour, which these checks exist for, is shown on vLLM's own request
model)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gdn_serve import envs
from gdn_serve.serve.request_checks import (
    RequestChecksMiddleware,
    body_refusal,
    field_refusal,
    length_refusal,
    max_request_bytes,
)

LIMIT = 1024


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_vllm_itself_lets_a_wizard_role_and_a_string_stream_through() -> None:
    """Why the checks exist: vLLM's request model accepts both (the OpenAI API does not)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body = _chat(stream="yes", messages=[{"role": "wizard", "content": "hi"}])
    request = ChatCompletionRequest.model_validate(body)
    assert request.stream is True and request.messages[0]["role"] == "wizard"
    assert field_refusal(body) is not None


@pytest.mark.parametrize("stream", ["yes", "true", 1, 0, [], {}])
def test_a_stream_that_is_not_a_boolean_is_refused(stream: object) -> None:
    refusal = field_refusal(_chat(stream=stream))
    assert refusal is not None and refusal.status == 400 and refusal.param == "stream"


@pytest.mark.parametrize("role", ["wizard", "USER", "", "system "])
def test_an_unknown_chat_role_is_refused_with_its_index(role: str) -> None:
    messages = [{"role": "system", "content": "x"}, {"role": role, "content": "y"}]
    refusal = field_refusal(_chat(messages=messages))
    assert refusal is not None and refusal.status == 400
    assert refusal.param == "messages[1].role" and "is not one of" in refusal.message


def test_vllm_takes_a_message_without_a_role_as_a_harmony_message() -> None:
    """Why a missing role is refused: vLLM's request model reads `{"author": {...}}` as an
    openai-harmony message, and its chat template then fails: a 500 (found by schemathesis)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body = _chat(messages=[{"author": {"role": "user", "name": None}}])
    assert ChatCompletionRequest.model_validate(body).messages
    refusal = field_refusal(body)
    assert refusal is not None and refusal.param == "messages[0].role"


@pytest.mark.parametrize(
    ("message", "param"),
    [({"content": "no role"}, "messages[1].role"), ({"role": 3}, "messages[1].role"),
     (7, "messages[1]"), ("user: hi", "messages[1]")],
)  # fmt: skip
def test_a_message_without_a_known_role_or_not_an_object_is_refused(
    message: object, param: str
) -> None:
    refusal = field_refusal(_chat(messages=[{"role": "user", "content": "x"}, message]))
    assert refusal is not None and refusal.status == 400 and refusal.param == param


@pytest.mark.parametrize(
    "body",
    [
        _chat(),
        _chat(stream=True, echo=False),
        _chat(stream=None),
        _chat(messages=[{"role": r, "content": "x"} for r in ("developer", "assistant", "tool")]),
        {"model": "m", "prompt": "hi", "max_tokens": 3},
        [1, 2],  # not an object: left to the app's own validation
        _chat(messages="not a list"),
    ],
)
def test_well_formed_or_app_validated_bodies_pass(body: object) -> None:
    assert field_refusal(body) is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"model": "m", "mess', "not valid JSON"),
        (b'{"temperature": NaN}', "not valid JSON"),
        (b'{"temperature": -Infinity}', "not valid JSON"),
        (b"\xff\xfe\xfa", "not valid JSON"),
        ('{"prompt": "hi"}'.encode("utf-16"), "not valid JSON"),
        ('\ufeff{"prompt": "hi"}'.encode(), "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_bodies_that_are_not_json_are_400(raw: bytes, fragment: str) -> None:
    refusal = body_refusal("application/json", raw)
    assert refusal is not None and refusal.status == 400 and fragment in refusal.message


def test_only_json_bodies_are_parsed() -> None:
    assert body_refusal("multipart/form-data; boundary=x", b"--x\r\n") is None
    assert body_refusal(None, b"{") is not None  # FastAPI reads an untyped body as JSON
    assert body_refusal("application/json", b"") is None


def test_the_declared_length_is_checked_before_the_body_is_read() -> None:
    assert length_refusal(None, LIMIT) is None and length_refusal(str(LIMIT), LIMIT) is None
    too_big = length_refusal(str(LIMIT + 1), LIMIT)
    assert too_big is not None and too_big.status == 413
    bad = length_refusal("-5", LIMIT)
    assert bad is not None and bad.status == 400


def test_the_limit_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_request_bytes() == int(envs.MAX_REQUEST_BYTES.default) == 8 * 2**20
    monkeypatch.setenv(envs.MAX_REQUEST_BYTES.name, "2048")
    assert max_request_bytes() == 2048
    for bad in ("0", "lots"):
        monkeypatch.setenv(envs.MAX_REQUEST_BYTES.name, bad)
        with pytest.raises(ValueError, match=envs.MAX_REQUEST_BYTES.name):
            max_request_bytes()


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.add_middleware(RequestChecksMiddleware, max_bytes=LIMIT)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        return {"echo": await request.json()}

    return TestClient(app)


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == status and error["type"] == "invalid_request_error"
    return error


def test_the_app_gets_the_whole_body_that_was_read(client: TestClient) -> None:
    body = _chat(stream=False)
    assert client.post("/v1/chat/completions", json=body).json() == {"echo": body}


def test_bad_fields_are_an_openai_400(client: TestClient) -> None:
    assert _error(client.post("/v1/chat/completions", json=_chat(stream="yes")), 400)
    wizard = _chat(messages=[{"role": "wizard", "content": "x"}])
    assert "wizard" in _error(client.post("/v1/chat/completions", json=wizard), 400)["message"]


def test_an_oversized_body_is_413_declared_or_chunked(client: TestClient) -> None:
    big = json.dumps(_chat(padding="x" * LIMIT)).encode()
    assert _error(client.post("/v1/chat/completions", content=big), 413)

    def chunks() -> Any:  # no Content-Length: sent chunked, counted as it arrives
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    assert _error(client.post("/v1/chat/completions", content=chunks()), 413)


class Body(BaseModel):
    model: str


def _ingress_with_route(ours: bool) -> TestClient:
    """Ray Serve LLM's own ingress app (ours: as app.ingress_app builds it) with a route that
    takes a pydantic body, as its OpenAI routes do."""
    from ray.llm._internal.serve.core.ingress.ingress import init

    from gdn_serve.contract import AppConfig, ArchDeployment
    from gdn_serve.serve.app import ingress_app

    config = AppConfig(model_source="/m", served_model_name="m", archs=(ArchDeployment("sm90"),))
    app = ingress_app(config) if ours else init()

    @app.post("/v1/completions")
    async def completions(body: Body) -> dict[str, str]:
        return {"model": body.model}

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"model": "m"}', {}),  # no content type: FastAPI validates the raw bytes
        (b'{"model": "m"}', {"content-type": "text/plain"}),
        (b'{"model": 5}', {"content-type": "application/json"}),
    ],
)
def test_a_body_fastapi_refuses_is_an_openai_400_not_rays_500(
    content: bytes, headers: dict[str, str]
) -> None:
    ours = _ingress_with_route(ours=True).post("/v1/completions", content=content, headers=headers)
    assert "body" in _error(ours, 400)["message"]
    if headers.get("content-type") != "application/json":  # negative control: Ray's handler
        rays = _ingress_with_route(ours=False).post(
            "/v1/completions", content=content, headers=headers
        )
        assert rays.status_code == 500
