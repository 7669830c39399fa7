"""The gateway: one OpenAI-compatible address that routes each request by its `model` field.

Per request it reads the alias's routes from the route table (so a change made by another
process is seen by the next request), picks a backend by weight or by the version pinned in
the `X-Upgate-Version` header, rewrites `model` to the backend's model name, forwards the
request, logs a sample and answers with the `X-Upgate-Version` header. A `model` that is not
a routed alias passes through, unchanged, to the default upstream. A request keeps the
backend it started on even when the routes change while it runs, so a switch drops nothing.
A body that is not JSON or names no model is a 400; it is counted in /metrics but logs no
sample, having no alias to log it under.

Two adapter versions on one vLLM server differ only in the request body's `model` field,
which a plain HTTP proxy cannot split on; blue/green splits between servers. Both are just
backends here.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from upgate.gateway.metrics import GatewayMetrics
from upgate.gateway.routes import Backend, RouteTable

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Upgate-Version"
PASSTHROUGH = "passthrough"
"""The version name samples and the response header carry for a model that is not routed."""

# Hop-by-hop headers and those the gateway sets itself are not forwarded either way.
_DROP_REQUEST = {"host", "content-length", "connection", "keep-alive", "transfer-encoding",
                 "upgrade", "te", "trailer", "proxy-authorization", "accept-encoding",
                 VERSION_HEADER.lower()}
_KEEP_RESPONSE = {"content-type", "cache-control"}


@dataclass(frozen=True)
class GatewaySettings:
    """What one gateway process needs besides its route table."""

    upstream: str
    """OpenAI root (ending in /v1) of the default upstream, for models that are not routed."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    max_connections: int = 256


@dataclass(frozen=True)
class _Target:
    """Where one request goes, decided once when it arrives."""

    alias: str
    version: str
    url: str
    model: str | None  # None: leave the body as the client sent it
    pinned: bool


def _error(status: int, message: str, kind: str) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}},
                        status_code=status)


def pick(backends: list[Backend], rng: random.Random) -> Backend:
    """One backend, drawn by weight; a weight-0 backend is never drawn."""
    live = [b for b in backends if b.weight > 0]
    if not live:
        raise ValueError("no backend carries weight")
    return rng.choices(live, weights=[b.weight for b in live], k=1)[0]


class Gateway:
    """The routing core, shared by the app's endpoints."""

    def __init__(self, table: RouteTable, settings: GatewaySettings,
                 client: httpx.AsyncClient | None = None,
                 rng: random.Random | None = None) -> None:
        self.table = table
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.rng = rng or random.Random()  # a traffic split, not a secret
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=settings.max_connections,
                                max_keepalive_connections=settings.max_connections),
        )

    async def aclose(self) -> None:
        """Close the upstream client if the gateway made it."""
        if self._own_client:
            await self.client.aclose()

    def resolve(self, alias: str, pin: str | None, path: str) -> _Target | JSONResponse:
        """Where a request for `alias` goes, or the error to answer with."""
        backends = self.table.routes(alias)
        if not backends:
            if pin:
                return _error(404, f"model {alias!r} is not a routed alias, so version "
                              f"{pin!r} cannot be pinned; see `upgate gateway routes {alias}` "
                              f"or drop the {VERSION_HEADER} header", "version_not_found")
            return _Target(alias, PASSTHROUGH, self.settings.upstream.rstrip("/") + path,
                           None, False)
        if pin:
            chosen = next((b for b in backends if b.version == pin), None)
            if chosen is None:
                known = ", ".join(b.version for b in backends)
                return _error(404, f"version {pin!r} is not routed for {alias!r} (routed: "
                              f"{known}); pin one of those or drop the {VERSION_HEADER} "
                              "header", "version_not_found")
        else:
            chosen = pick(backends, self.rng)
        return _Target(alias, chosen.version, chosen.base_url + path, chosen.model, bool(pin))

    async def record(self, target: _Target, status: int, started: float,
                     error: str | None = None) -> None:
        """Log one sample in the route table (off the event loop) and in the metrics."""
        await run_in_threadpool(self.record_now, target, status, started, error)

    def record_now(self, target: _Target, status: int, started: float,
                   error: str | None = None) -> None:
        """Log one sample in the route table and in the metrics."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.metrics.observe(target.alias, target.version, status, latency_ms / 1000.0)
        try:
            self.table.record(target.alias, target.version, status=status,
                              latency_ms=latency_ms, pinned=target.pinned, error=error)
        except Exception:  # a full disk must not turn an answered request into a failure
            log.exception("could not log a sample for %s/%s", target.alias, target.version)

    async def forward(self, request: Request, path: str) -> Response:
        """Route one completion request (see the module docstring)."""
        started = time.perf_counter()
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.metrics.observe("", "", 400, 0.0)
            return _error(400, "the request body is not JSON; send an OpenAI request body "
                          "with a `model` field", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) \
                or not body["model"]:
            self.metrics.observe("", "", 400, 0.0)
            return _error(400, "the request body has no `model`; name a model or a routed "
                          "alias (GET /v1/models lists them)", "invalid_request_error")
        pin = request.headers.get(VERSION_HEADER) or None
        resolved = await run_in_threadpool(self.resolve, body["model"], pin, path)
        if isinstance(resolved, JSONResponse):
            target = _Target(body["model"], pin or "", "", None, True)
            await self.record(target, resolved.status_code, started, "version not routed")
            return resolved
        target = resolved
        if target.model is not None:
            body["model"] = target.model
            raw = json.dumps(body).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["content-type"] = "application/json"
        upstream_request = self.client.build_request("POST", target.url, content=raw,
                                                     headers=headers)
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            return await self._down(target, exc, started)
        answer_headers = {k: v for k, v in upstream.headers.items()
                          if k.lower() in _KEEP_RESPONSE}
        answer_headers[VERSION_HEADER] = target.version
        if body.get("stream") is True and upstream.status_code < 400:
            return StreamingResponse(
                self._relay(upstream, target, started), status_code=upstream.status_code,
                headers=answer_headers, background=BackgroundTask(upstream.aclose))
        try:
            content = await upstream.aread()
        except httpx.HTTPError as exc:
            return await self._down(target, exc, started)
        finally:
            await upstream.aclose()
        await self.record(target, upstream.status_code, started,
                          None if upstream.status_code < 400 else content[:200].decode(
                              errors="replace"))
        return Response(content, status_code=upstream.status_code, headers=answer_headers)

    async def _relay(self, upstream: httpx.Response, target: _Target,
                     started: float) -> AsyncIterator[bytes]:
        """Pass a stream through chunk by chunk; the sample is logged when it ends."""
        finished = False
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
            finished = True
        except httpx.HTTPError as exc:
            # The status line has gone out already; the sample says the answer broke.
            finished = True
            await self.record(target, 0, started, f"stream broke: {type(exc).__name__}")
            raise
        finally:
            if not finished:
                # The client went away mid-stream: 499 (a 4xx, so not the version's fault),
                # logged without awaiting since the task is being cancelled.
                self.record_now(target, 499, started, "client closed the stream")
        await self.record(target, upstream.status_code, started)

    async def _down(self, target: _Target, exc: httpx.HTTPError,
                    started: float) -> JSONResponse:
        """Log a sample with status 0 and answer 504 (timeout) or 502 (anything else)."""
        await self.record(target, 0, started, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            status, kind = 504, "upstream_timeout"
            what = f"did not answer within the gateway's timeout ({type(exc).__name__})"
        else:
            status, kind = 502, "upstream_unavailable"
            what = f"could not be reached or broke off ({type(exc).__name__}: {exc})"
        message = (f"backend {target.version!r} of {target.alias!r} at {target.url} {what}; "
                   "check that its server runs (`upgate gateway routes "
                   f"{target.alias}` shows where it is routed)")
        if target.version == PASSTHROUGH:
            message = (f"the default upstream at {target.url} {what}; check that it runs "
                       "or route the model through an alias")
        response = _error(status, message, kind)
        response.headers[VERSION_HEADER] = target.version
        return response

    async def models(self) -> dict[str, Any]:
        """Routed aliases, then the default upstream's models (those not shadowed)."""
        table = self.table
        aliases = await run_in_threadpool(table.aliases)
        data: list[dict[str, Any]] = []
        for alias in aliases:
            backends = await run_in_threadpool(table.routes, alias)
            data.append({"id": alias, "object": "model", "owned_by": "upgate-gateway",
                         "versions": [{"version": b.version, "weight": b.weight}
                                      for b in backends]})
        try:
            answer = await self.client.get(self.settings.upstream.rstrip("/") + "/models")
            answer.raise_for_status()
            upstream_models = answer.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("default upstream's /models did not answer: %s", exc)
            upstream_models = []
        data.extend(m for m in upstream_models
                    if isinstance(m, dict) and m.get("id") not in set(aliases))
        return {"object": "list", "data": data}


def create_app(table: RouteTable, settings: GatewaySettings, *,
               client: httpx.AsyncClient | None = None,
               rng: random.Random | None = None) -> FastAPI:
    """The gateway as an ASGI app over `table` (tests may pass their own client and rng)."""
    gateway = Gateway(table, settings, client, rng)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.aclose()

    app = FastAPI(title="upgate gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.gateway = gateway

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gateway.forward(request, "/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gateway.forward(request, "/completions")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return await gateway.models()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        generation = await run_in_threadpool(table.generation)
        return {"status": "ok", "generation": generation, "upstream": settings.upstream}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = gateway.metrics.render()
        return Response(body, media_type=content_type)

    return app


def serve(table: RouteTable, settings: GatewaySettings, *, host: str, port: int) -> None:
    """Run the gateway with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(table, settings), host=host, port=port, log_level="warning",
                access_log=False)
