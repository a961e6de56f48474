"""The serving API's defences, end to end through the real Ray Serve stack started with an API
key: the key on every route but the health probes, the request checks, a corpus of malformed
requests, a bounded schemathesis run on the schema the stack serves, and a stop that a second
signal cannot interrupt.

Both application shapes run: direct streaming (one arch; the replica's own vLLM server answers
HTTP) and the balancing ingress over two simulated archs (what a cluster runs). The key is
given with a trailing newline, as a Secret written with `echo` holds it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gdn_serve import envs
from gdn_serve.serve.processes import ServerProcess
from tests.e2e.api_checks import MODEL, USER, corpus, problem, schemathesis_5xx, send
from tests.e2e.stack_process import local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

KEY = "e2e-key"
MAX_MODEL_LEN = 512
SHAPES = {
    "direct": (),
    "balanced": ("--simulate-archs", "sm89,sm90", "--kv-cache-gib", "0.5"),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    stack, _ = local_stack(
        tmp_path_factory.mktemp(request.param),
        *("--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", *SHAPES[request.param]),
        env={envs.API_KEY.name: f"{KEY}\n"},
    )
    try:
        yield stack.start(timeout_s=600)
    finally:
        stack.stop()


def _root(server: ServerProcess) -> str:
    return server.api_url.removesuffix("/v1")


def _client(server: ServerProcess, key: str | None = KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=_root(server), headers=headers, timeout=60)


# Routes outside /v1 that the API port answers: FastAPI's docs and schema, and under direct
# streaming vLLM's own (its Prometheus metrics, tokenizer, version).
CLOSED = ["/v1/models", "/docs", "/openapi.json", "/metrics", "/version", "/nope"]


@pytest.mark.parametrize("key", [None, "wrong", f"{KEY}x", KEY.upper()])
def test_a_missing_or_wrong_key_is_401_on_every_route(
    server: ServerProcess, key: str | None
) -> None:
    with _client(server, key) as client:
        answers = {path: client.get(path) for path in CLOSED}
        answers["POST /tokenize"] = client.post("/tokenize", json={"model": MODEL, "prompt": "x"})
    assert {path: r.status_code for path, r in answers.items()} == dict.fromkeys(answers, 401)
    assert all(r.json()["error"]["type"] == "authentication_error" for r in answers.values())


def test_the_right_key_passes_and_the_health_probe_needs_none(server: ServerProcess) -> None:
    with _client(server) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
        assert client.get("/openapi.json").json()["paths"]
    with _client(server, None) as client:
        assert client.get("/health").status_code != 401  # 200 from vLLM; the ingress has none


def test_streaming_needs_the_key_too(server: ServerProcess) -> None:
    def stream(key: str) -> str:
        client = openai.OpenAI(base_url=server.api_url, api_key=key, max_retries=0)
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=8,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert stream(KEY)
    with pytest.raises(openai.AuthenticationError):
        stream("wrong")


def test_what_vllm_lets_through_is_an_openai_400(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0)
    wizard = [{"role": "wizard", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="wizard"):
        client.chat.completions.create(model=MODEL, messages=wizard, max_tokens=2)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=2,
            extra_body={"stream": "yes"},
        )


def test_every_malformed_request_is_a_4xx_openai_error(server: ServerProcess) -> None:
    cases = corpus(MAX_MODEL_LEN, int(envs.MAX_REQUEST_BYTES.default))
    with _client(server) as client:
        problems = [p for case in cases if (p := problem(case, send(client, case)))]
    assert problems == []


def test_schemathesis_finds_no_5xx(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    started = time.monotonic()
    sent, found = schemathesis_5xx(_root(server), headers, max_examples=6, timeout_s=120)
    print(f"schemathesis: {sent} requests in {time.monotonic() - started:.0f} s")
    print("\n".join(found))
    assert sent > 20 and found == []


def test_clients_that_disconnect_mid_stream_leave_it_serving(server: ServerProcess) -> None:
    """Streams closed after their first chunk (the balancer's count of each is released; its
    unit tests show that); then requests in a row still come back."""
    body = {"model": MODEL, "messages": USER, "max_tokens": 64, "stream": True}
    with _client(server) as client:
        for _ in range(6):
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                assert next(response.iter_lines()).startswith("data:")
    completions = openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0).completions
    tokens = [completions.create(model=MODEL, prompt=str(i), max_tokens=2) for i in range(6)]
    assert [out.usage.completion_tokens if out.usage else 0 for out in tokens] == [2] * 6


def test_still_serving_after_everything(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0)
    out = client.completions.create(model=MODEL, prompt="ok", max_tokens=4)
    assert out.usage is not None and out.usage.completion_tokens == 4


def test_a_second_signal_during_stop_leaves_no_process(server: ServerProcess) -> None:
    assert server.proc is not None
    server.tree()  # remember the whole tree at its largest
    server.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while "gdn-serve: stopping" not in Path(server.log_path).read_text():
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    for sig in (signal.SIGINT, signal.SIGTERM):  # an impatient user, then the service manager
        time.sleep(0.5)
        server.proc.send_signal(sig)
    assert server.proc.wait(timeout=120) == 0, server.log_tail()
    assert "gdn-serve: stopped" in server.log_path.read_text()
    assert server.survivors() == []
