"""The unit tier: scripted models only; real model requests are forbidden.

Under CI a skipped test fails (tests/skips.py): the local backend's contract tests need
bubblewrap, which `make test` installs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The hook that fails a skip under CI, registered for this tier by its name here.
from tests.skips import pytest_runtest_makereport as pytest_runtest_makereport
from upgate import guard


@pytest.fixture(autouse=True)
def _forbid_model_requests() -> Iterator[None]:
    guard.ALLOW_MODEL_REQUESTS = False
    guard.ALLOW_FAKE_SANDBOX = True  # the unit tier runs cycles in the fake sandbox
    yield
    guard.ALLOW_MODEL_REQUESTS = True
    guard.ALLOW_FAKE_SANDBOX = False
