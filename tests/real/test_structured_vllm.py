"""Typed calls against the real vLLM server: the json_schema response format reaches the
server, which holds even a 135M model to the schema."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from upgate.agents.models import chat_model
from upgate.agents.structured import call_structured
from upgate.config import EndpointConfig

pytestmark = pytest.mark.real


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Literal["billing", "bug", "account", "feature"]
    urgency: int = Field(..., ge=1, le=3)


def test_a_tiny_model_gives_schema_valid_output_under_the_servers_enforcement(
    vllm_root: str
) -> None:
    model = chat_model(EndpointConfig(base_url=f"{vllm_root}/v1", model="smollm2",
                                      max_tokens=64, timeout_s=60))
    ticket = call_structured(
        model,
        [SystemMessage(content="Classify the support ticket as JSON."),
         HumanMessage(content="I was charged twice for my subscription this month.")],
        Ticket, name="ticket", retries=0,
    )
    assert ticket.label in ("billing", "bug", "account", "feature")
    assert 1 <= ticket.urgency <= 3
