"""Test doubles shipped with the package: chat clients for the harness, no server needed.

Both have the shape `ChatChoiceHarness` calls (`client.chat.completions.create(**kw)`), like
`upgate.agents.testing` does for the agents' chat models. `FunctionClient` answers with a
plain function of the messages; `OracleClient` knows the right label of every ticket and
answers right only when the request deserves it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class ChatMessage:
    """The reply's message."""

    content: str | None


@dataclass
class ChatChoice:
    """One choice of a reply."""

    message: ChatMessage


@dataclass
class ChatResponse:
    """A chat completion with its choices, as much of it as the harness reads."""

    choices: list[ChatChoice]


def response(content: str | None) -> ChatResponse:
    """A one-choice reply."""
    return ChatResponse(choices=[ChatChoice(message=ChatMessage(content=content))])


class FunctionClient:
    """Answers `reply(messages)`; records every request and the most requests in flight."""

    def __init__(self, reply: Callable[[list[dict[str, str]]], str | None],
                 delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.chat = self
        self.completions = self

    def create(self, **kwargs: Any) -> ChatResponse:
        """One chat completion."""
        with self._lock:
            self.calls.append(kwargs)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return response(self.reply(kwargs["messages"]))
        finally:
            with self._lock:
                self.in_flight -= 1


class OracleClient:
    """Answers right when the request carries few-shot examples (or when the model name is
    in `good_models`), else always `default`; records every request in `requests`."""

    def __init__(self, answers: Mapping[str, str], good_models: Sequence[str] = (),
                 default: str = "billing") -> None:
        self.answers = dict(answers)
        self.good_models = set(good_models)
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.chat = self
        self.completions = self

    def create(self, **kwargs: Any) -> ChatResponse:
        """One chat completion: the ticket is the last message."""
        self.requests.append(kwargs)
        messages = kwargs["messages"]
        ticket = messages[-1]["content"]
        good = len(messages) > 2 or kwargs["model"] in self.good_models
        return response(self.answers.get(ticket, self.default) if good else self.default)
