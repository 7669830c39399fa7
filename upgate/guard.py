"""The switch that forbids real model requests (the unit test tier turns it off).

Lives in the core package so both the agents and the trusted eval harness obey it without
the evals depending on the agents.
"""

from __future__ import annotations

from upgate.errors import ModelRequestsForbiddenError

ALLOW_MODEL_REQUESTS = True

ALLOW_FAKE_SANDBOX = False
"""The fake sandbox runs candidate code on the host with no isolation: only test code turns
this on (the test suite's conftest does, in-process). No setting or environment variable
does, so `UPGATE_SANDBOX__TYPE=fake` is refused for cycles (see `upgate.app`)."""


def check_model_requests(endpoint: str, hint: str) -> None:
    """Raise unless real model requests are allowed."""
    if not ALLOW_MODEL_REQUESTS:
        raise ModelRequestsForbiddenError(
            f"real model requests are forbidden here (endpoint {endpoint}); {hint}"
        )
