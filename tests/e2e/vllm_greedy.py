"""Greedy outputs of a `vllm.LLM` in one process (no Ray, no server): the reference for the
stack, and the probe for the plugin's decode routing.

Run as a script: `python vllm_greedy.py request.json result.json`. The request names the model,
the engine arguments, the prompts and chats, and how many top logprobs to keep per token. The
result holds the generated texts, those logprobs, and the `gdn_serve_*` samples this process
recorded. The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, one worker), so
the plugin's metrics land in this process's Prometheus registry. The caller chooses the plugin's
part through the environment: `VLLM_PLUGINS=""` is vLLM without it, `GDN_SERVE_BACKEND` forces
a backend.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _logprobs(steps: Any) -> list[dict[str, float]]:
    return [{str(token): lp.logprob for token, lp in step.items()} for step in steps or []]


def _gdn_serve_samples() -> list[tuple[str, dict[str, str], float]]:
    import prometheus_client

    return [
        (s.name, s.labels, s.value)
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith("gdn_serve")
        for s in family.samples
        if not s.name.endswith(("_bucket", "_created"))
    ]


def main(request_path: str, result_path: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    request = json.loads(Path(request_path).read_text())
    llm = LLM(
        model=request["model"], distributed_executor_backend="uni", **request["engine_kwargs"]
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=request["max_tokens"], logprobs=request.get("logprobs")
    )
    completions = llm.generate(request["prompts"], params, use_tqdm=False)
    chats = [llm.chat(messages, params, use_tqdm=False)[0] for messages in request["chats"]]
    result = {
        "completions": [out.outputs[0].text for out in completions],
        "chats": [out.outputs[0].text for out in chats],
        "logprobs": [_logprobs(out.outputs[0].logprobs) for out in completions],
        "gdn_serve": _gdn_serve_samples(),
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
