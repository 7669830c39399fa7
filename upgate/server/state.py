"""What the service holds while it runs: the Runner, the sessions, the answering model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from langchain_core.language_models import BaseChatModel

from upgate.graphs.runner import Runner
from upgate.identity import Signer

if TYPE_CHECKING:
    from upgate.server.auth import Sessions


@dataclass
class ServiceState:
    """One service process's parts, built once at start-up."""

    runner: Runner
    sessions: Sessions
    signer: Signer
    """The service's own key: it signs decisions for the people it logged in."""
    answer_model: Callable[[], BaseChatModel]
    secure_cookies: bool = False
    running: set[str] = field(default_factory=set)
    """Cycles this process is driving now (started here, or resumed by a decision)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def service(request: Request) -> ServiceState:
    """The service state (a FastAPI dependency)."""
    svc = request.app.state.upgate
    assert isinstance(svc, ServiceState)
    return svc
