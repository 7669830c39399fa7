"""Test doubles shipped with the package: a chat model whose reply is a plain function.

Like pydantic-ai's FunctionModel: the reply is computed from the messages and the name of
the schema asked for, so a unit test scripts an agent without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

Reply = Callable[[Sequence[BaseMessage], str], str]
"""(messages, schema name) -> the model's text reply."""


class ScriptedChatModel(BaseChatModel):
    """A chat model whose reply is `reply(messages, schema_name)`; records every call."""

    reply: Reply
    model_id: str = "scripted"
    calls: list[tuple[str, list[BaseMessage]]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        fmt = kwargs.get("response_format") or {}
        name = str(fmt.get("json_schema", {}).get("name", "")) if isinstance(fmt, dict) else ""
        self.calls.append((name, list(messages)))
        text = self.reply(messages, name)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def scripted(replies: dict[str, list[str] | str]) -> ScriptedChatModel:
    """A scripted model answering each schema name from a queue (the last reply repeats)."""
    queues = {k: ([v] if isinstance(v, str) else list(v)) for k, v in replies.items()}

    def reply(messages: Sequence[BaseMessage], name: str) -> str:
        queue = queues.get(name)
        if not queue:
            raise AssertionError(f"scripted model has no reply for schema {name!r}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return ScriptedChatModel(reply=reply, calls=[])
