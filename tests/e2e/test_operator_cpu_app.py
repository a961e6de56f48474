"""The operator's CPU deployment, end to end as far as one machine goes: the application config
it writes for the CPU sample, served by Ray Serve + vLLM on CPU (`operator_cpu_app.py`, in a
child process) and answering the official `openai` client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gdn_serve.serve.processes import child_environment
from tests.conftest import child_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_the_app_config_the_operator_writes_for_cpu_nodes_serves_completions(
    tmp_path: Path,
) -> None:
    result_path, log_path = tmp_path / "result.json", tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.run(
            [sys.executable, "-m", "tests.e2e.operator_cpu_app", str(result_path)],
            cwd=Path(__file__).parents[2],
            env=child_environment(child_env()),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=800,
            check=False,
        )
    assert run.returncode == 0, log_path.read_text()[-4000:]
    result = json.loads(result_path.read_text())
    assert result["models"] == ["tiny-qwen35"]
    assert result["completion_tokens"] == 8
    # What was served is the operator's plan for CPU nodes, not the local stack's own config.
    (arch,) = result["served"]["archs"]
    assert (arch["arch"], arch["use_gpu"], arch["ray_resource"]) == ("cpu", False, "gdn-arch-cpu")
    assert arch["gdn_backend"] == "cpu"
    assert arch["engine_kwargs"] == {"kv_cache_memory_bytes": 2**30}
    assert result["served"]["engine_kwargs"]["mamba_ssm_cache_dtype"] == "float32"
    assert result["served"]["max_model_len"] == 2048
