"""Suite cases sent through the gateway, pinned to one version, scored by the eval harness.

A pinned request names the alias in `model` (as every client does) and the version in the
header `X-Upgate-Version`, so it takes the same path as live traffic (and is logged among
the step's samples) while landing on the version asked for. The cases, prompt, labels and
scorer are the ones the critic used, run by the trusted `ChatChoiceHarness`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from upgate.evals.harness import ChatChoiceHarness, ChatClient
from upgate.evals.suite import Case
from upgate.guard import check_model_requests
from upgate.rollout.limits import SuiteScore

log = logging.getLogger(__name__)

PIN_HEADER = "X-Upgate-Version"
"""The request header that pins a request to one version of an alias."""

PinnedClientFactory = Callable[[str, float, str], ChatClient]
"""Build a chat client for (gateway OpenAI root, timeout_s, version to pin)."""


def openai_pinned_client(base_url: str, timeout_s: float, version: str) -> ChatClient:
    """An `openai.OpenAI` client whose every request carries the version pin (no retries:
    a retried request would hide the very errors a step is judged on)."""
    from openai import OpenAI

    check_model_requests(base_url, "give the rollout a scripted pinned-client factory")
    client = OpenAI(base_url=base_url, api_key="not-needed", timeout=timeout_s, max_retries=0,
                    default_headers={PIN_HEADER: version})
    return cast(ChatClient, client)


class Prober(Protocol):
    """Scores one version of the alias on suite cases sent through the gateway."""

    def score(self, version: str) -> SuiteScore:
        """The version's suite score."""


@dataclass(frozen=True)
class SuiteProbe:
    """Score one version on the first `cases` suite cases, through the gateway."""

    gateway_url: str
    alias: str
    cases: Sequence[Case]
    system_prompt: str
    few_shot: Sequence[Mapping[str, str]]
    labels: tuple[str, ...]
    scorer: str
    scorer_options: Mapping[str, Any]
    client_factory: PinnedClientFactory = openai_pinned_client
    timeout_s: float = 60.0

    def score(self, version: str) -> SuiteScore:
        """Run the cases pinned to `version`; an unanswered case scores 0."""
        if not self.cases:
            return SuiteScore(version=version, cases=0, errors=0, score=0.0)
        harness = ChatChoiceHarness(
            client_factory=lambda url, t: self.client_factory(url, t, version))
        results = harness.run(
            self.cases, base_url=self.gateway_url, model=self.alias,
            system_prompt=self.system_prompt, few_shot=self.few_shot, labels=self.labels,
            scorer=self.scorer, scorer_options=self.scorer_options, timeout_s=self.timeout_s,
            concurrency=4,
        )
        errors = sum(r.error is not None for r in results)
        total = sum(r.score for r in results if not math.isnan(r.score))
        log.info("suite through the gateway on %s: %d case(s), %d error(s)", version,
                 len(results), errors)
        return SuiteScore(version=version, cases=len(results), errors=errors,
                          score=round(total / len(results), 4))
