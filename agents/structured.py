"""Typed calls: ask a chat model for JSON under a schema, validate it, retry a bounded number
of times, then fail with the reason.

The request goes through LangChain's `with_structured_output(method="json_schema")`, so it
carries `response_format` json_schema and vLLM enforces the schema while decoding; the
pydantic model then checks what a JSON schema cannot say. Malformed or invalid output is
retried by LangChain's `with_retry`; transport failures are left to the client's own
retries and reported once.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel, ValidationError

from upgate.errors import AgentOutputError
from upgate.meter import report_tokens

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


def json_schema(schema: type[BaseModel], name: str) -> dict[str, Any]:
    """The named, strict JSON schema of a pydantic model, as `response_format` carries it."""
    return {"name": name, "schema": schema.model_json_schema(), "strict": True}


def _reason(exc: BaseException) -> str:
    """A short, model-facing account of why an output was refused."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def call_structured(
    model: BaseChatModel,
    messages: list[BaseMessage],
    schema: type[T],
    *,
    name: str,
    retries: int,
) -> T:
    """Get one `schema` object from the model, retrying malformed output `retries` times."""
    errors: list[str] = []

    def retry_on(exc: BaseException) -> bool:
        if not isinstance(exc, OutputParserException | ValidationError):
            return False
        errors.append(f"attempt {len(errors) + 1}: {_reason(exc)}")
        log.info("%s output invalid (%s)", name, errors[-1])
        return True

    def validate(data: Any) -> T:
        return schema.model_validate(data)

    structured = model.with_structured_output(json_schema(schema, name), method="json_schema")
    chain = (structured | RunnableLambda(validate)).with_retry(
        retry_if_exception_type=retry_on,
        stop_after_attempt=retries + 1,
        wait_exponential_jitter=False,
    )
    usage = UsageMetadataCallbackHandler()  # token accounting for budgets (every attempt)
    try:
        result = chain.invoke(messages, config={"callbacks": [usage]})
    except (OutputParserException, ValidationError):
        raise AgentOutputError(
            f"the model gave no valid {name} after {retries + 1} attempts: "
            + " | ".join(errors)
        ) from None
    except Exception as exc:  # the request itself failed (the client already retried)
        raise AgentOutputError(
            f"the {name} request failed after the client's retries: "
            f"{type(exc).__name__}: {exc}; check the agent's endpoint ([agents] base_url)"
        ) from exc
    finally:
        for model_name, counts in usage.usage_metadata.items():
            report_tokens(name, dict(counts), model_name)
    if not isinstance(result, schema):
        raise AgentOutputError(f"the model's {name} did not validate as {schema.__name__}")
    return result
