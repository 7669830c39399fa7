"""The critic corpus: gaming and honest candidates made from the bundled example target.

Every candidate is generated here, at run time, from examples/ticket-triage: an edit is a
Python function over a fresh git copy of the target, and the diff is what real `git diff`
prints for it. Recipe candidates (few_shot, prompt_variant) come from the real coder recipes.
Each case also says how the stand-in eval endpoint behaves for it (`OracleSpec`): a LoRA
adapter or a prompt the endpoint treats as good, an endpoint that only "learned" the visible
split, one that gets one slice worse, one that fails on long prompts.

The unit tier, the Docker tier and benchmarks/bench_critic.py all judge the same cases:

    ws = Workspace.create(tmp)
    for case in build_corpus(ws):
        verdict = judge(case, ws, policy=bundled_policy(), sandbox=FakeSandboxConfig()).verdict
"""

from __future__ import annotations

from .ticket_base import (
    _MADE_BY,
    BUNDLED_POLICY,
    CLASSIFY,
    CONFIG,
    GENERATORS,
    INJECTION,
    LABELS,
    PROBES,
    PROMPT,
    REVIEW_APPROVES,
    TESTS,
    AnySandboxConfig,
    CaseKind,
    CorpusCase,
    CorpusOracle,
    Decision,
    FakeAdmin,
    Generator,
    OracleSpec,
    Workspace,
    both,
    candidate,
    corpus_case,
    proposal,
    recipe_candidate,
    replace_text,
    served_name,
    set_few_shot,
    split_shots,
)
from .ticket_gaming import (
    special_case,
)
from .ticket_honest import (
    build_case,
    build_corpus,
)
from .ticket_judge import (
    BaselineMemo,
    Judged,
    bare_policy,
    bundled_policy,
    critic_model,
    judge,
    reason_tags,
)

__all__ = [
    "BUNDLED_POLICY",
    "CLASSIFY",
    "CONFIG",
    "GENERATORS",
    "INJECTION",
    "LABELS",
    "PROBES",
    "PROMPT",
    "REVIEW_APPROVES",
    "TESTS",
    "_MADE_BY",
    "AnySandboxConfig",
    "BaselineMemo",
    "CaseKind",
    "CorpusCase",
    "CorpusOracle",
    "Decision",
    "FakeAdmin",
    "Generator",
    "Judged",
    "OracleSpec",
    "Workspace",
    "bare_policy",
    "both",
    "build_case",
    "build_corpus",
    "bundled_policy",
    "candidate",
    "corpus_case",
    "critic_model",
    "judge",
    "proposal",
    "reason_tags",
    "recipe_candidate",
    "replace_text",
    "served_name",
    "set_few_shot",
    "special_case",
    "split_shots",
]
