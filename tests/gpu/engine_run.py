"""One CUDA vLLM engine for the GPU tests, in a child process of pytest: start it as the
config says, generate greedily, read what the plugin counted and timed, write it all as JSON.

    python tests/gpu/engine_run.py CONFIG.json RESULT.json

A failure (the engine not starting: a CUDA graph capture refused, ...) is a result too:
`{"ok": false, "error": ...}`, so one broken configuration does not hide the others.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _logprobs(output: Any) -> list[dict[str, float]]:
    return [{str(t): lp.logprob for t, lp in step.items()} for step in output.logprobs or []]


def run(config: dict[str, Any]) -> dict[str, Any]:
    from gdn_serve.bench.engine import (
        EngineSpec,
        decode_samples,
        flush_timings,
        greedy,
        layer_counts,
        start_engine,
    )

    spec_fields = dict(config["spec"])
    spec_fields["capture_sizes"] = tuple(spec_fields["capture_sizes"])
    spec = EngineSpec(**spec_fields)
    started = time.perf_counter()
    llm = start_engine(spec)
    ready_s = time.perf_counter() - started
    plugged = spec.backend is not None
    before = layer_counts(llm) if plugged else {}
    started = time.perf_counter()
    outputs = llm.generate(
        config["prompts"], greedy(config["max_tokens"], config["logprobs"]), use_tqdm=False
    )
    generate_s = time.perf_counter() - started
    after = layer_counts(llm) if plugged else {}
    if plugged:
        flush_timings(llm)
    return {
        "ok": True,
        "ready_s": ready_s,
        "generate_s": generate_s,
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "logprobs": [_logprobs(o.outputs[0]) for o in outputs],
        "counts_before": before,
        "counts_after": after,
        "samples": decode_samples(),
    }


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    if config.get("perturb"):
        os.environ["GDN_TEST_PERTURB"] = str(config["perturb"])
    try:
        result = run(config)
    except BaseException:  # the result of a configuration that does not run
        result = {"ok": False, "error": traceback.format_exc()[-6000:]}
    Path(sys.argv[2]).write_text(json.dumps(result))
    sys.stdout.flush()
    # an in-process engine's atexit teardown can hang on a broken CUDA context: the result is
    # written, leave now
    os._exit(0)


if __name__ == "__main__":
    main()
