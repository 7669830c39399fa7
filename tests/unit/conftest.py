"""The unit tier: scripted models only; real model requests are forbidden."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from upgate import guard


@pytest.fixture(autouse=True)
def _forbid_model_requests() -> Iterator[None]:
    guard.ALLOW_MODEL_REQUESTS = False
    guard.ALLOW_FAKE_SANDBOX = True  # the unit tier runs cycles in the fake sandbox
    yield
    guard.ALLOW_MODEL_REQUESTS = True
    guard.ALLOW_FAKE_SANDBOX = False
