"""The multi-arch application on one machine: two arch deployments (CPU engines, each pinned by
its arch's Ray custom resource, as on a mixed cluster) behind one balancing OpenAI ingress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
import pytest

from gdn_serve.serve.processes import ServerProcess
from tests.e2e.stack_process import local_stack, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ARCHS = ("sm89", "sm90")
MODEL = "tiny-qwen35"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    stack, metrics_url = local_stack(
        tmp_path_factory.mktemp("multi"),
        *("--simulate-archs", ",".join(ARCHS), "--max-model-len", "512", "--kv-cache-gib", "0.5"),
    )
    try:
        yield stack.start(timeout_s=600), metrics_url
    finally:
        stack.stop()


def _requests_per_deployment(metrics_url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for sample in scrape(metrics_url):
        if sample.name == "ray_serve_deployment_request_counter_total":
            name = sample.labels.get("deployment", "")
            counts[name] = counts.get(name, 0.0) + sample.value
    return counts


def test_one_model_served_by_both_arch_deployments(server: tuple[ServerProcess, str]) -> None:
    stack, metrics_url = server
    client = openai.OpenAI(base_url=stack.api_url, api_key="x", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    async def one(aclient: openai.AsyncOpenAI, i: int) -> int:
        out = await aclient.completions.create(
            model=MODEL, prompt=f"request {i}", max_tokens=8, temperature=0
        )
        return out.usage.completion_tokens if out.usage else 0

    async def burst() -> list[int]:
        async with openai.AsyncOpenAI(base_url=stack.api_url, api_key="x", max_retries=0) as c:
            return await asyncio.gather(*(one(c, i) for i in range(12)))

    assert asyncio.run(burst()) == [8] * 12
    for i in range(4):  # a trickle too: idle requests take turns
        assert client.completions.create(model=MODEL, prompt=str(i), max_tokens=4).usage

    deadline, counts = time.monotonic() + 60, {}
    while time.monotonic() < deadline:  # Ray exports metrics on an interval
        counts = _requests_per_deployment(metrics_url)
        served = {
            arch: sum(v for k, v in counts.items() if k.endswith(f"llm-{arch}")) for arch in ARCHS
        }
        if all(served.values()) and sum(served.values()) >= 16:
            break
        time.sleep(2)
    assert all(served[arch] >= 4 for arch in ARCHS), counts


def test_unknown_model_is_404_through_the_balancing_ingress(
    server: tuple[ServerProcess, str],
) -> None:
    client = openai.OpenAI(base_url=server[0].api_url, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def test_listeners_on_loopback_and_clean_stop(server: tuple[ServerProcess, str]) -> None:
    stack, _ = server
    listeners = stack.listeners()
    assert listeners and [item for item in listeners if not item.is_loopback] == []
    assert stack.stop(timeout_s=120) == 0, stack.log_tail()
    assert stack.survivors() == []
