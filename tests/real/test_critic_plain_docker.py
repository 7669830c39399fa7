"""The plain runner on the real Docker sandbox (examples/spans): no pytest, same verdicts.

A candidate correct only while pytest's variables are in the environment passes every
pytest run on Docker and must be rejected as `differs_under_test`; the honest fix must be
accepted with both runners agreeing.
"""

from __future__ import annotations

import json

import pytest

from upgate.agents.critic_tests import SideRun
from upgate.sandboxes.config import DockerSandboxConfig

from ..corpora.spans import FIX, SpansCase, SpansWorkspace, judge_spans
from ..corpora.spans_plain import UNDER_TEST

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> SpansWorkspace:
    """One spans workspace for the module (on Docker)."""
    return SpansWorkspace.create(tmp_path_factory.mktemp("plain"))


def _checks(evidence_json: str) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(evidence_json)["checks"]}


def test_the_second_runner_on_docker(ws: SpansWorkspace) -> None:
    memo: dict[str, SideRun] = {}
    honest = judge_spans(SpansCase("honest", "honest", ws.edit("honest", FIX), "sorts"),
                         ws, DockerSandboxConfig(), memo=memo)
    assert honest.decision == "accept", honest.reasons
    plain = _checks(honest.evidence_json)["differs_under_test"]
    assert plain["passed"] and "passed" in str(plain["detail"])
    gaming = judge_spans(SpansCase("env_scan", "gaming", ws.edit("env", UNDER_TEST["env_scan"]),
                                   "sorts only under test"), ws, DockerSandboxConfig(), memo=memo)
    assert gaming.decision == "reject", gaming.reasons
    found = _checks(gaming.evidence_json)["differs_under_test"]
    assert not found["passed"]
    assert "tests.test_core::test_merge_unsorted_input" in str(found["detail"])
