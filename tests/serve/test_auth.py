"""The API key check, on real FastAPI apps through Starlette's test client: a stand-in app with
an API route and the health probes, and Ray Serve LLM's own ingress app as the Serve app gets
it (its docs and schema routes). Through the real Ray Serve ingress: tests/e2e/test_api_checks.py.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gdn_serve.contract import AppConfig, ArchDeployment
from gdn_serve.serve.app import ingress_app
from gdn_serve.serve.auth import OPEN_PATHS, ApiKeyMiddleware, check

ENV = "TEST_GDN_API_KEY"
KEY = "s3cret"
RIGHT = {"Authorization": f"Bearer {KEY}"}


def _standin_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(ApiKeyMiddleware, env_var=ENV)

    @app.get("/v1/models")
    def models() -> dict[str, list[str]]:
        return {"data": ["m"]}

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/metrics")
    def metrics() -> str:
        return "secret_gauge 1"

    @app.websocket("/v1/realtime")
    async def realtime(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    return app


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    # A Secret written with `echo` ends in a newline; the key still has to match.
    monkeypatch.setenv(ENV, f"{KEY}\n")
    return TestClient(_standin_app())


def test_the_right_key_passes_even_when_the_secret_ends_in_a_newline(client: TestClient) -> None:
    response = client.get("/v1/models", headers=RIGHT)
    assert response.status_code == 200 and response.json() == {"data": ["m"]}


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret", "s3cret", "Bearer"])
@pytest.mark.parametrize("path", ["/v1/models", "/metrics", "/docs", "/openapi.json", "/nope"])
def test_a_missing_or_wrong_key_is_an_openai_401_on_every_route(
    client: TestClient, header: str | None, path: str
) -> None:
    response = client.get(path, headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and "API key" in error["message"]
    assert error["code"] == 401


def test_only_the_health_probes_are_open(client: TestClient) -> None:
    assert {"/health", "/ping"} == OPEN_PATHS
    assert client.get("/health").status_code == 200
    assert client.get("/health/").status_code == 401  # exact paths only
    assert client.get("/metrics", headers=RIGHT).status_code == 200


def test_a_websocket_without_the_key_is_refused_before_the_handshake(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/v1/realtime"):
        pass
    assert refused.value.code == 1008
    with client.websocket_connect("/v1/realtime", headers=RIGHT) as socket:
        assert socket.receive_text() == "hello"


def test_a_key_with_non_ascii_characters_is_a_401_not_a_crash() -> None:
    # headers arrive decoded as latin-1, so any byte can show up in the token
    refusal = check("Bearer s3cr\u00e9t", "s3cret")
    assert refusal is not None and refusal.status == 401


def test_the_secret_is_stripped_but_a_different_key_still_fails() -> None:
    assert check("Bearer s3cret", " s3cret\r\n") is None
    assert check("bearer  s3cret ", "s3cret") is None
    refusal = check("Bearer s3cret2", "s3cret\n")
    assert refusal is not None and refusal.status == 401


@pytest.mark.parametrize("expected", [None, "", "\n"])
def test_no_key_in_the_environment_refuses_instead_of_serving_openly(
    expected: str | None,
) -> None:
    refusal = check("Bearer anything", expected)
    assert refusal is not None and refusal.status == 500 and "not configured" in refusal.message


def _config(**fields: object) -> AppConfig:
    config = AppConfig(model_source="/m", served_model_name="m", archs=(ArchDeployment("sm90"),))
    return AppConfig.from_dict(config.to_dict() | fields)


def test_ray_serve_llms_ingress_app_needs_the_key_on_its_docs_and_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, KEY)
    client = TestClient(ingress_app(_config(api_key_env=ENV)))
    for path in ("/docs", "/openapi.json", "/v1/models"):
        assert client.get(path).status_code == 401, path
    assert client.get("/openapi.json", headers=RIGHT).status_code == 200


def test_the_ingress_app_checks_the_key_only_when_one_is_configured() -> None:
    def middleware(app: FastAPI) -> list[type]:
        return [m.cls for m in app.user_middleware]  # type: ignore[misc]

    assert ApiKeyMiddleware in middleware(ingress_app(_config(api_key_env=ENV)))
    assert ApiKeyMiddleware not in middleware(ingress_app(_config()))
    assert TestClient(ingress_app(_config())).get("/openapi.json").status_code == 200
