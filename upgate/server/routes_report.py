"""The rollout report as a page (`/report`, any role, session login) and as Prometheus
metrics (`/metrics`).

`/metrics` is for a scraper, which has no session: with `UPGATE_METRICS_TOKEN` set in the
service's environment it needs `Authorization: Bearer <that token>` from any address;
without it, only clients on this machine (loopback) may scrape, so the metrics never leave
the host unless someone chose a token. Behind a TLS proxy on the same machine the client is
the forwarded one, so remote scrapes through the proxy need the token too.
"""

from __future__ import annotations

import hmac
import logging
import os
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from upgate.errors import UpgateError
from upgate.report.html import STYLE_CSP, render_html
from upgate.report.metrics import build_report
from upgate.report.models import RolloutReport
from upgate.report.prometheus import exposition
from upgate.server.auth import Reader
from upgate.server.state import ServiceState, service

log = logging.getLogger(__name__)

PAGE = "/report"
PAGE_CSP = (f"default-src 'none'; style-src {STYLE_CSP}; img-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
"""The page has no script and one style block, allowed by its hash."""
TOKEN_ENV = "UPGATE_METRICS_TOKEN"  # noqa: S105 (the variable's name, not a secret)

router = APIRouter(tags=["report"])
Svc = Annotated[ServiceState, Depends(service)]


def _report(svc: ServiceState, since: date | None = None) -> RolloutReport:
    settings = svc.runner.deps.settings
    return build_report(svc.runner.deps.ledger, gateway_db=settings.gateway_db, since=since)


@router.get(PAGE, response_class=HTMLResponse)
def report_page(session: Reader, svc: Svc, since: date | None = None) -> HTMLResponse:
    """Rollout metrics with plots (the page `upgate report --html` writes)."""
    try:
        return HTMLResponse(render_html(_report(svc, since)))
    except UpgateError as exc:
        raise HTTPException(500, str(exc)) from None


def _loopback(request: Request) -> bool:
    from upgate.server.app import is_loopback

    return request.client is not None and is_loopback(request.client.host)


def scraper(request: Request) -> None:
    """Let the scrape through, or refuse it (see the module docstring)."""
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, f"send Authorization: Bearer <the token in {TOKEN_ENV}>",
                                headers={"WWW-Authenticate": "Bearer"})
        return
    if not _loopback(request):
        raise HTTPException(403, f"metrics are served to this machine only; set {TOKEN_ENV} "
                                 "in the service's environment to let a remote scraper in "
                                 "with that bearer token")


@router.get("/metrics", response_class=Response, dependencies=[Depends(scraper)])
def metrics(svc: Svc) -> Response:
    """Rollout metrics in the Prometheus text format, computed from the ledger now."""
    return Response(exposition(lambda: _report(svc)), media_type=CONTENT_TYPE_PLAIN_0_0_4)
