"""Greedy outputs of a plain `vllm.LLM` (no Ray, no server): the reference for the stack.

Run as a script: `python plain_vllm_greedy.py request.json result.json`. The request names
the model, the engine arguments and the prompts; the result holds the generated texts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(request_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams

    request = json.loads(Path(request_path).read_text())
    llm = LLM(model=request["model"], **request["engine_kwargs"])
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"])
    completions = llm.generate(request["prompts"], params, use_tqdm=False)
    chats = [llm.chat(messages, params, use_tqdm=False)[0] for messages in request["chats"]]
    result = {
        "completions": [out.outputs[0].text for out in completions],
        "chats": [out.outputs[0].text for out in chats],
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
