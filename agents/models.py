"""Chat models for the agents: one OpenAI-compatible client for every endpoint.

Agents reach models only through an OpenAI-compatible endpoint (vLLM or any other), set per
agent by configuration. Tests of logic use `upgate.agents.testing.ScriptedChatModel`; the
unit tier switches `upgate.guard.ALLOW_MODEL_REQUESTS` off so a real request there fails loudly.
"""

from __future__ import annotations

import logging

from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from upgate.config import EndpointConfig
from upgate.guard import check_model_requests

log = logging.getLogger(__name__)



def chat_model(endpoint: EndpointConfig) -> BaseChatModel:
    """A chat model bound to one configured endpoint."""
    check_model_requests(endpoint.base_url, "use upgate.agents.testing.ScriptedChatModel")
    return ChatOpenAI(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=SecretStr(endpoint.api_key()),
        temperature=endpoint.temperature,
        max_completion_tokens=endpoint.max_tokens,
        timeout=endpoint.timeout_s,
        max_retries=2,
        use_responses_api=False,
    )
