"""Test doubles shipped with the package: a chat model whose reply is a plain function.

Like pydantic-ai's FunctionModel: the reply is computed from the messages and the name of
the schema asked for, so a unit test scripts an agent without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel

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

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """As ChatOpenAI's `method="json_schema"` does for a JSON schema given as a dict
        (name, schema, strict): the request carries it as `response_format`, and the reply's
        text is parsed as JSON (an OutputParserException when it is not)."""
        if (kwargs.get("method", "json_schema") != "json_schema" or include_raw
                or not isinstance(schema, dict) or "schema" not in schema):
            raise NotImplementedError("the scripted model does json_schema with a dict schema")
        fmt = {"type": "json_schema", "json_schema": schema}
        return self.bind(response_format=fmt) | JsonOutputParser()


def scripted(replies: dict[str, list[str] | str]) -> ScriptedChatModel:
    """A scripted model answering each schema name from a queue (the last reply repeats)."""
    queues = {k: ([v] if isinstance(v, str) else list(v)) for k, v in replies.items()}

    def reply(messages: Sequence[BaseMessage], name: str) -> str:
        queue = queues.get(name)
        if not queue:
            raise AssertionError(f"scripted model has no reply for schema {name!r}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return ScriptedChatModel(reply=reply, calls=[])
