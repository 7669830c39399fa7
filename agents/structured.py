"""Typed calls: ask a chat model for JSON under a schema, validate it, retry a bounded number
of times, then fail with the reason."""

from __future__ import annotations

import logging
from typing import TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ValidationError

from upgate.errors import AgentOutputError
from upgate.meter import report_usage

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


def response_format(schema: type[BaseModel], name: str) -> dict[str, object]:
    """The OpenAI `response_format` for a pydantic schema (vLLM enforces it while decoding)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema.model_json_schema(), "strict": True},
    }


def call_structured(
    model: BaseChatModel,
    messages: list[BaseMessage],
    schema: type[T],
    *,
    name: str,
    retries: int,
) -> T:
    """Get one `schema` object from the model, retrying malformed output `retries` times."""
    bound = model.bind(response_format=response_format(schema, name))
    history = list(messages)
    errors: list[str] = []
    for attempt in range(retries + 1):
        try:
            reply = bound.invoke(history)
        except Exception as exc:  # transport errors: bounded retries too
            errors.append(f"attempt {attempt + 1}: request failed: {type(exc).__name__}: {exc}")
            log.warning("%s request failed: %s", name, exc)
            continue
        report_usage(name, reply)  # token accounting for budgets (no-op outside a batch)
        text = reply.content if isinstance(reply.content, str) else str(reply.content)
        try:
            return schema.model_validate_json(text)
        except ValidationError as exc:
            short = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            errors.append(f"attempt {attempt + 1}: {short}")
            log.info("%s output invalid (attempt %d): %s", name, attempt + 1, short)
            history = [
                *history,
                AIMessage(content=text[:2000]),
                HumanMessage(
                    content=f"That reply did not match the schema ({short}). "
                    "Reply again with only a JSON object that matches the schema."
                ),
            ]
    raise AgentOutputError(
        f"the model gave no valid {name} after {retries + 1} attempts: " + " | ".join(errors)
    )
