"""The per-process eval cache: reuse only what provably has the same answer."""

from __future__ import annotations

from pathlib import Path

from upgate.evals.harness import CachingHarness, ChatChoiceHarness
from upgate.evals.suite import load_suite

from ..conftest import EXAMPLE_SUITE, OracleClient, suite_answers


def test_same_request_is_answered_once_and_a_moved_alias_is_asked_again() -> None:
    client = OracleClient(suite_answers())
    version = {"triage": "v1"}
    harness = CachingHarness(ChatChoiceHarness(client_factory=lambda u, t: client),
                             lambda m: version.get(m, m))
    suite = load_suite(Path(EXAMPLE_SUITE))
    cases = suite.split("visible")[:10]
    kw = {"base_url": "http://x/v1", "system_prompt": "p", "few_shot": [],
          "labels": suite.labels}
    first = harness.run(cases, model="triage", **kw)
    assert len(client.requests) == 10
    again = harness.run(cases, model="triage", **kw)
    assert again == first
    assert len(client.requests) == 10
    # A superset runs only the new cases, and keeps the order asked for.
    more = suite.split("visible")[:12]
    out = harness.run(list(reversed(more)), model="triage", **kw)
    assert [r.case_id for r in out] == [c.id for c in reversed(more)]
    assert len(client.requests) == 12
    # Another prompt, another model, or the alias pointing elsewhere: asked again.
    harness.run(cases, model="triage", **{**kw, "system_prompt": "q"})
    assert len(client.requests) == 22
    version["triage"] = "v2"
    harness.run(cases, model="triage", **kw)
    assert len(client.requests) == 32
    harness.run(cases, model="triage", repeats=2, **kw)
    assert len(client.requests) == 52
