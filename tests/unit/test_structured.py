"""Typed calls: the request carries the JSON schema for the server to enforce, malformed or
invalid output is retried a bounded number of times, then fails with the reasons, and a
transport failure is retried by the client alone (not once more per output retry)."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, SecretStr

from upgate.agents.structured import call_structured
from upgate.agents.testing import scripted
from upgate.errors import AgentOutputError

ASK = [HumanMessage(content="answer")]


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    color: Literal["red", "blue"]
    size: int


def test_a_valid_reply_comes_back_typed_from_one_request() -> None:
    model = scripted({"thing": '{"color": "red", "size": 3}'})
    assert call_structured(model, ASK, Thing, name="thing", retries=2) == Thing(color="red",
                                                                               size=3)
    assert [name for name, _ in model.calls] == ["thing"]


def test_malformed_output_is_retried_then_accepted() -> None:
    model = scripted({"thing": ["not json", '{"color": "green", "size": 1}',
                                '{"color": "blue", "size": 1}']})
    assert call_structured(model, ASK, Thing, name="thing", retries=2).color == "blue"
    assert len(model.calls) == 3


def test_persistent_bad_output_fails_after_the_bound_with_every_reason() -> None:
    model = scripted({"thing": ["not json", '{"color": "green", "size": 1}',
                                '{"color": "red", "size": 1}']})
    with pytest.raises(AgentOutputError, match="no valid thing after 2 attempts") as err:
        call_structured(model, ASK, Thing, name="thing", retries=1)
    assert len(model.calls) == 2
    text = str(err.value)
    assert "attempt 1:" in text and "attempt 2: color:" in text


def _openai_server(replies: list[tuple[int, str]], seen: list[dict[str, Any]]) -> ChatOpenAI:
    """A ChatOpenAI whose HTTP transport answers from `replies` (the last one repeats)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        status, content = replies.pop(0) if len(replies) > 1 else replies[0]
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "down"}})
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        })

    return ChatOpenAI(base_url="http://127.0.0.1:9/v1", model="m", api_key=SecretStr("k"),
                      max_retries=1, use_responses_api=False,
                      http_client=httpx.Client(transport=httpx.MockTransport(handle)))


def test_the_request_carries_the_strict_json_schema_and_output_retries_resend_it() -> None:
    seen: list[dict[str, Any]] = []
    model = _openai_server([(200, "nope"), (200, '{"color": "blue", "size": 2}')], seen)
    assert call_structured(model, ASK, Thing, name="thing", retries=1).size == 2
    assert len(seen) == 2
    for body in seen:
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["name"] == "thing" and fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"] == Thing.model_json_schema()


def test_a_transport_failure_is_retried_by_the_client_only() -> None:
    seen: list[dict[str, Any]] = []
    model = _openai_server([(500, "")], seen)
    with pytest.raises(AgentOutputError, match="thing request failed"):
        call_structured(model, ASK, Thing, name="thing", retries=3)
    assert len(seen) == 2  # the client's one retry; the output retries do not multiply it
