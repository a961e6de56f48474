"""The ingress API key check, on a real FastAPI app through Starlette's test client."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gdn_serve.serve.auth import ApiKeyMiddleware, check

ENV = "TEST_GDN_API_KEY"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv(ENV, "s3cret")
    app = FastAPI()
    app.add_middleware(ApiKeyMiddleware, env_var=ENV)

    @app.get("/v1/models")
    def models() -> dict[str, list[str]]:
        return {"data": ["m"]}

    @app.get("/health")
    def health() -> str:
        return "ok"

    return TestClient(app)


def test_the_right_key_passes(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200 and response.json() == {"data": ["m"]}


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret", "s3cret"])
def test_a_missing_or_wrong_key_is_an_openai_401(client: TestClient, header: str | None) -> None:
    response = client.get("/v1/models", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and "API key" in error["message"]


def test_a_key_with_non_ascii_characters_is_a_401_not_a_crash() -> None:
    # headers arrive decoded as latin-1, so any byte can show up in the token
    refusal = check("Bearer s3cr\u00e9t", "s3cret")
    assert refusal is not None and refusal[0] == 401


def test_paths_outside_the_api_stay_open(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


def test_no_key_in_the_environment_refuses_instead_of_serving_openly() -> None:
    refusal = check("Bearer anything", None)
    assert refusal is not None and refusal[0] == 500 and "not configured" in refusal[1]


def test_the_ingress_app_checks_the_key_only_when_one_is_configured() -> None:
    from gdn_serve.serve.app import ingress_app
    from gdn_serve.serve.config import AppConfig, ArchDeployment

    config = AppConfig(model_source="/m", served_model_name="m", archs=(ArchDeployment("sm90"),))
    with_key = AppConfig.from_dict(config.to_dict() | {"api_key_env": ENV})

    def middleware(app: FastAPI) -> list[type]:
        return [m.cls for m in app.user_middleware]  # type: ignore[misc]

    assert ApiKeyMiddleware in middleware(ingress_app(with_key))
    assert ApiKeyMiddleware not in middleware(ingress_app(config))
