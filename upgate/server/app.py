"""The approval service's app: API routers, the chat page, and strict security headers."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from langchain_core.language_models import BaseChatModel

from upgate.graphs.runner import Runner
from upgate.identity import Signer
from upgate.notify.slack_actions import slack_actions_router
from upgate.notify.worker import notify_lifespan
from upgate.server import (
    auth,
    routes_cycles,
    routes_decide,
    routes_live,
    routes_report,
    routes_stop,
)
from upgate.server.state import ServiceState

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"

# No inline script or style, nothing from another origin, no framing, no plugins.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The OpenAPI docs page runs Swagger UI's inline start-up script: it gets its own policy,
# still same-origin only (its assets are served from the package, no CDN).
DOCS_PATHS = ("/docs",)
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
DOCS_ASSETS = "/docs-assets"


def _headers(request: Request, response: Response) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    docs = request.url.path in DOCS_PATHS
    response.headers["Content-Security-Policy"] = DOCS_CSP if docs else CSP
    if request.url.path == routes_report.PAGE:  # no script; its one style block, by hash
        response.headers["Content-Security-Policy"] = routes_report.PAGE_CSP


def create_app(runner: Runner, *, signer: Signer,
               answer_model: Callable[[], BaseChatModel] | None = None,
               secure_cookies: bool = False) -> FastAPI:
    """The service over one Runner; tests pass a scripted answering model."""
    from upgate.agents.models import chat_model

    @cache
    def default_model() -> BaseChatModel:
        return chat_model(runner.deps.settings.agents.critic)

    settings = runner.deps.settings
    app = FastAPI(title="upgate approval service", version="1",
                  description="Inbox, cycles, evidence, decisions, questions, ledger.",
                  docs_url=None, redoc_url=None,
                  lifespan=lambda _app: notify_lifespan(settings.state_dir, settings.notify,
                                                        runner))
    app.state.upgate = ServiceState(runner=runner, sessions=auth.Sessions(), signer=signer,
                                    answer_model=answer_model or default_model,
                                    secure_cookies=secure_cookies)

    @app.middleware("http")
    async def security_headers(request: Request,
                               call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        _headers(request, response)
        return response

    for module in (auth, routes_cycles, routes_decide, routes_live, routes_report):
        app.include_router(module.router)
    app.include_router(routes_stop.router)
    if settings.notify.slack_signing_secret_env:  # Slack buttons: signed by Slack, not CSRF
        app.include_router(slack_actions_router(settings, runner, signer))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def _offline_docs(app: FastAPI) -> None:
    """OpenAPI docs at /docs with Swagger UI served from the installed package, not a CDN."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


def is_loopback(host: str) -> bool:
    """Whether a listen address is on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(runner: Runner, *, signer: Signer, host: str, port: int,
          secure_cookies: bool) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    app = create_app(runner, signer=signer, secure_cookies=secure_cookies)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=True,
                forwarded_allow_ips="127.0.0.1")
