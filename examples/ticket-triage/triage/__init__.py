"""Support-ticket triage: route a customer ticket to one of four queues with a small model."""

from triage.classify import (
    LABELS,
    FewShotExample,
    TriageConfig,
    build_messages,
    classify,
    classify_ticket,
    load_config,
    load_prompt,
    parse_label,
)

__all__ = [
    "LABELS",
    "FewShotExample",
    "TriageConfig",
    "build_messages",
    "classify",
    "classify_ticket",
    "load_config",
    "load_prompt",
    "parse_label",
]
