"""The trusted chat-choice harness: runs eval cases against an OpenAI-compatible endpoint.

It evaluates untrusted *data* (a candidate system prompt, few-shot set, or a LoRA adapter
served under a candidate model name) outside any sandbox, so it treats all of it as data:
it sends it, never executes it, and never lets one case's failure stop the run.

The request format is the example target's contract (examples/ticket-triage, classify.py):

    [system: prompt, stripped] + [user: example input, assistant: example expected]...
    + [user: the case input, as is]

at temperature 0 under vLLM's guided choice over the labels. The harness does not import
the target's code: the target is what is being judged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict

from upgate.errors import EvalError
from upgate.evals.scorers import get_scorer
from upgate.evals.suite import Case, Split
from upgate.guard import check_model_requests
from upgate.progress import reporter

log = logging.getLogger(__name__)

MAX_TOKENS = 8
_MAX_ERROR_CHARS = 500


class _Completions(Protocol):
    def create(self, **kwargs: Any) -> Any: ...


class _Chat(Protocol):
    @property
    def completions(self) -> _Completions: ...


class ChatClient(Protocol):
    """Anything shaped like `openai.OpenAI`: `client.chat.completions.create(**kwargs)`."""

    @property
    def chat(self) -> _Chat: ...


ClientFactory = Callable[[str, float], ChatClient]
"""Build a client for (base_url, timeout_s)."""


def openai_client_factory(base_url: str, timeout_s: float) -> ChatClient:
    """An `openai.OpenAI` client for a local OpenAI-compatible server (no retries)."""
    from openai import OpenAI

    # The same switch the agents obey: the unit tier turns real requests off.
    check_model_requests(base_url, "give ChatChoiceHarness a scripted client factory")

    # No retries: a retried request hides failures and skews the latency we measure.
    client = OpenAI(base_url=base_url, api_key="not-needed", timeout=timeout_s, max_retries=0)
    # openai's own classes satisfy the protocol at run time; their nested descriptors do
    # not match a structural Protocol exactly, hence the cast.
    return cast(ChatClient, client)


class CaseResult(BaseModel):
    """What one case (one repeat) did: the output, its score, how long it took."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: str
    split: Split
    slices: tuple[str, ...]
    output: str | None
    score: float
    latency_s: float
    error: str | None = None
    repeat: int = 0
    raw_output: str | None = None


def build_messages(
    text: str, system_prompt: str, few_shot: Sequence[Mapping[str, str]] = ()
) -> list[dict[str, str]]:
    """Chat messages for one case, in the example target's exact format."""
    messages = [{"role": "system", "content": system_prompt.strip()}]
    for example in few_shot:
        messages.append({"role": "user", "content": example["input"]})
        messages.append({"role": "assistant", "content": example["expected"]})
    messages.append({"role": "user", "content": text})
    return messages


def parse_choice(text: str, labels: Sequence[str]) -> str | None:
    """The label a reply names (same rule as the target's parse_label), else None."""
    cleaned = text.strip().strip(string.punctuation + string.whitespace).lower()
    if cleaned in labels:
        return cleaned
    words = {word.strip(string.punctuation) for word in cleaned.split()}
    found = [label for label in labels if label in words]
    return found[0] if len(found) == 1 else None


def check_few_shot(few_shot: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
    """Raise EvalError unless every few-shot entry is {input: text, expected: a label}."""
    for i, item in enumerate(few_shot):
        if (
            not isinstance(item, Mapping)
            or set(item) != {"input", "expected"}
            or not isinstance(item["input"], str)
            or not isinstance(item["expected"], str)
            or (labels and item["expected"] not in labels)
        ):
            raise EvalError(
                f"few_shot[{i}] must be {{'input': text, 'expected': one of {list(labels)}}}"
            )


class ChatChoiceHarness:
    """Classify each case with a chat model under guided choice, and score the answers."""

    def __init__(self, client_factory: ClientFactory = openai_client_factory) -> None:
        self._client_factory = client_factory

    def run(
        self,
        cases: Sequence[Case],
        *,
        base_url: str,
        model: str,
        system_prompt: str,
        few_shot: Sequence[Mapping[str, str]],
        labels: tuple[str, ...],
        repeats: int = 1,
        concurrency: int = 8,
        timeout_s: float = 30,
        scorer: str = "exact_match",
        scorer_options: Mapping[str, Any] | None = None,
    ) -> list[CaseResult]:
        """Run every case `repeats` times, in (repeat, case) order; a failed case is a value."""
        if not labels:
            raise EvalError("ChatChoiceHarness needs the suite's labels for guided choice")
        if repeats < 1 or concurrency < 1 or not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise EvalError("repeats and concurrency must be >= 1 and timeout_s a positive number")
        check_few_shot(few_shot, labels)
        score_fn = get_scorer(scorer)
        options = dict(scorer_options or {})
        client = self._client_factory(base_url, timeout_s)
        jobs = [(r, case) for r in range(repeats) for case in cases]

        def one(job: tuple[int, Case]) -> CaseResult:
            repeat, case = job
            return self._run_case(
                client,
                case,
                repeat,
                model,
                system_prompt,
                few_shot,
                labels,
                timeout_s,
                lambda out: score_fn(out, case.expected, **options),
            )

        report, scored, lock = reporter(), [0], threading.Lock()

        def counted(job: tuple[int, Case]) -> CaseResult:
            result = one(job)
            with lock:
                scored[0] += 1
                report("case", scored[0], len(jobs), detail=model)
            return result

        # Threads, not processes: the work is waiting on HTTP; map() keeps the order.
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="upgate-eval") as pool:
            results = list(pool.map(counted, jobs))
        failed = sum(r.error is not None for r in results)
        log.info("ran %d case(s) x %d on %s: %d error(s)", len(cases), repeats, model, failed)
        return results

    def _run_case(
        self,
        client: ChatClient,
        case: Case,
        repeat: int,
        model: str,
        system_prompt: str,
        few_shot: Sequence[Mapping[str, str]],
        labels: tuple[str, ...],
        timeout_s: float,
        score: Callable[[str], float],
    ) -> CaseResult:
        start = time.perf_counter()
        raw: str | None = None
        try:
            response = client.chat.completions.create(
                model=model,
                messages=build_messages(case.input, system_prompt, few_shot),
                temperature=0.0,
                max_tokens=MAX_TOKENS,
                extra_body={"structured_outputs": {"choice": list(labels)}},
                timeout=timeout_s,
            )
            latency = time.perf_counter() - start
            content = response.choices[0].message.content
            if not isinstance(content, str) or not content.strip():
                raise ValueError("the endpoint returned an empty reply")
            raw = content
            label = parse_choice(content, labels)
            # A reply that names no label is a wrong answer (score 0), not an error; keep
            # what it said so the evidence shows it.
            output = label if label is not None else content
            value = score(output)
            return CaseResult(
                case_id=case.id,
                split=case.split,
                slices=case.slices,
                output=output,
                score=float(value),
                latency_s=latency,
                repeat=repeat,
                raw_output=raw,
            )
        except Exception as exc:  # one case's failure is a value; the run goes on
            latency = time.perf_counter() - start
            message = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
            log.debug("case %s repeat %d failed: %s", case.id, repeat, message)
            return CaseResult(
                case_id=case.id,
                split=case.split,
                slices=case.slices,
                output=None,
                score=math.nan,
                latency_s=latency,
                error=message,
                repeat=repeat,
                raw_output=raw,
            )


class CachingHarness(ChatChoiceHarness):
    """A harness that remembers per-case results within one process.

    A cycle evaluates the baseline twice (observe, then the critic) with the same model,
    prompt and cases; at temperature 0 the answers are the same, so the second run reuses
    the first. The key holds everything an answer depends on, including the version the
    served name stands for (`version_of`), so a swapped alias is never answered from cache.
    """

    def __init__(self, inner: ChatChoiceHarness,
                 version_of: Callable[[str], str] = lambda model: model) -> None:
        self._inner = inner
        self._version_of = version_of
        self._cache: dict[str, CaseResult] = {}

    def run(
        self,
        cases: Sequence[Case],
        *,
        base_url: str,
        model: str,
        system_prompt: str,
        few_shot: Sequence[Mapping[str, str]],
        labels: tuple[str, ...],
        repeats: int = 1,
        concurrency: int = 8,
        timeout_s: float = 30,
        scorer: str = "exact_match",
        scorer_options: Mapping[str, Any] | None = None,
    ) -> list[CaseResult]:
        """Run the cases not seen before under this exact configuration; reuse the rest."""
        if repeats != 1:  # repeats exist to sample again: never answer them from memory
            return self._inner.run(
                cases, base_url=base_url, model=model, system_prompt=system_prompt,
                few_shot=few_shot, labels=labels, repeats=repeats, concurrency=concurrency,
                timeout_s=timeout_s, scorer=scorer, scorer_options=scorer_options,
            )
        context = json.dumps(
            [base_url, model, self._version_of(model), system_prompt, list(few_shot),
             list(labels), scorer, dict(scorer_options or {})],
            sort_keys=True, default=str,
        )

        def key(case: Case) -> str:
            return hashlib.sha256((context + "\0" + case.model_dump_json()).encode()).hexdigest()

        missing = {c.id: c for c in cases if key(c) not in self._cache}
        fresh: dict[str, CaseResult] = {}
        if missing:
            for r in self._inner.run(
                list(missing.values()), base_url=base_url, model=model, system_prompt=system_prompt,
                few_shot=few_shot, labels=labels, concurrency=concurrency,
                timeout_s=timeout_s, scorer=scorer, scorer_options=scorer_options,
            ):
                fresh[r.case_id] = r
                if r.error is None:  # errors are not remembered: the next run asks again
                    self._cache[key(missing[r.case_id])] = r
        return [fresh[c.id] if c.id in fresh else self._cache[key(c)] for c in cases]
