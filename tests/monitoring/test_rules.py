"""The alert rules with Debian's promtool: they parse, every alert fires on the series of its
test case and stays quiet on others, and each has a runbook section in docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from observability import alerts

from tests.monitoring.tools_import import ROOT, RULES

PROMTOOL = shutil.which("promtool")
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.fail("promtool missing: `make setup` installs Debian's prometheus package")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True)


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alerts.ALERTS)} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    """Negative control: the TTFT alert at 10 s instead of 2 s no longer fires on its case."""
    groups = alerts.rule_groups()
    (ttft,) = [
        r
        for g in groups["groups"]
        for r in g["rules"]
        if r["alert"] == "Qwen35TimeToFirstTokenHigh"
    ]
    assert ttft["expr"].endswith(" > 2")
    ttft["expr"] = ttft["expr"].removesuffix(" > 2") + " > 10"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    suite = UNIT_TESTS.read_text().replace(
        "../../charts/qwen35-stack/monitoring/rules.yaml", str(tmp_path / "rules.yaml")
    )
    (tmp_path / "alerts_test.yaml").write_text(suite)
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0
    assert "Qwen35TimeToFirstTokenHigh" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a.name for a in alerts.ALERTS}
    assert fired == names
    assert quiet == names


def test_every_alert_has_a_runbook_section() -> None:
    text = (ROOT / "docs/operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }
    for alert in alerts.ALERTS:
        assert alert.rule()["annotations"]["runbook_url"].endswith(f"operations.md#{alert.anchor}")
        assert alert.anchor in anchors, alert.name
