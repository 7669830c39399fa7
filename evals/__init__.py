"""upgate.evals: the trusted machinery that judges a candidate.

Suites (versioned, hashed, visible/hidden splits), scorers, the chat-choice harness,
paired statistics, tamper and gaming detectors, and the evidence packet.
"""

from upgate.evals.detectors import Finding, run_detectors
from upgate.evals.evidence import EvidencePacket
from upgate.evals.harness import CaseResult, ChatChoiceHarness
from upgate.evals.scorers import get_scorer
from upgate.evals.stats import Comparison, SliceDelta, compare, non_regression
from upgate.evals.suite import Case, Suite, load_suite

__all__ = [
    "Case",
    "CaseResult",
    "ChatChoiceHarness",
    "Comparison",
    "EvidencePacket",
    "Finding",
    "SliceDelta",
    "Suite",
    "compare",
    "get_scorer",
    "load_suite",
    "non_regression",
    "run_detectors",
]
