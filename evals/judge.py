"""An LLM judge scorer with a pinned judge model and prompt version.

A suite that uses it names the judge model and the judge prompt's version
(`judge@HASH12`); if the prompt file's content no longer matches that version, or the
endpoint serves another model, the judge refuses to score rather than judging with
something nobody reviewed. A judge that cannot answer gives NaN, which counts as a failure.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from upgate.errors import AgentOutputError, EvalError
from upgate.prompts import PromptVersion, load_prompt

log = logging.getLogger(__name__)


class JudgeVerdict(BaseModel):
    """The judge's grade and a one-line reason."""

    model_config = ConfigDict(extra="forbid")

    grade: Literal["wrong", "partial", "right"]
    reason: str = Field(..., max_length=240)

    @property
    def score(self) -> float:
        """The grade as a score in {0, 0.5, 1}."""
        return {"wrong": 0.0, "partial": 0.5, "right": 1.0}[self.grade]


class LLMJudge:
    """Grades free-text outputs against references with a pinned model and prompt."""

    def __init__(self, model: BaseChatModel, *, model_id: str, pinned_model: str,
                 pinned_prompt: str, retries: int = 1) -> None:
        self.prompt: PromptVersion = load_prompt("judge")
        if self.prompt.version_id != pinned_prompt:
            raise EvalError(
                f"the suite pins judge prompt {pinned_prompt}, but prompts/judge.md is "
                f"{self.prompt.version_id}; review the new prompt and update the suite's pin"
            )
        if model_id != pinned_model:
            raise EvalError(
                f"the suite pins judge model {pinned_model!r}, but the judge endpoint is "
                f"configured with {model_id!r}"
            )
        self.model = model
        self.model_id = model_id
        self.retries = retries

    @property
    def version(self) -> dict[str, str]:
        """What the evidence records about this judge."""
        return {"judge_model": self.model_id, "judge_prompt": self.prompt.version_id}

    def __call__(self, output: Any, expected: Any = None, /, **options: Any) -> float:
        """Score one output in {0, 0.5, 1}; NaN when the judge gives no valid grade."""
        if output is None or (isinstance(output, float) and not math.isfinite(output)):
            return 0.0
        text = str(output).strip()
        if not text:
            return 0.0
        system = self.prompt.render(input=str(options.get("input", ""))[:2000],
                                    expected=str(expected)[:2000], output=text[:4000])
        try:
            verdict = _call(self.model, system, self.retries)
        except AgentOutputError as exc:
            log.warning("judge gave no valid grade: %s", exc)
            return float("nan")
        return verdict.score


def _call(model: BaseChatModel, system: str, retries: int) -> JudgeVerdict:
    from upgate.agents.structured import call_structured

    return call_structured(model, [SystemMessage(content=system),
                                   HumanMessage(content="Grade the answer now.")],
                           JudgeVerdict, name="judge", retries=retries)
