"""Log in with a credential: server-side sessions, a CSRF token per session, role checks.

The session cookie holds only a random id (HttpOnly, SameSite=Strict, Secure behind TLS);
the person, roles and CSRF token stay on the server. Every request that changes anything
must echo the session's CSRF token in the `X-CSRF-Token` header.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from upgate.approvals import authenticate
from upgate.errors import ApprovalError
from upgate.server.decisions import roles
from upgate.server.state import ServiceState, service

log = logging.getLogger(__name__)

COOKIE = "upgate_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class Session:
    """One logged-in person."""

    name: str
    roles: set[str]
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """Server-side sessions in memory, expiring after `idle_s` without a request."""

    def __init__(self, idle_s: float = 8 * 3600) -> None:
        self.idle_s = idle_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, name: str, person_roles: set[str]) -> tuple[str, Session]:
        """A new session id (the cookie's value) and its session."""
        sid = secrets.token_urlsafe(32)
        session = Session(name=name, roles=person_roles)
        with self._lock:
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session for an id, if any."""
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if now - session.last_seen > self.idle_s:
                del self._by_id[sid]
                return None
            session.last_seen = now
            return session

    def drop(self, sid: str | None) -> None:
        """End a session."""
        with self._lock:
            self._by_id.pop(sid or "", None)


def current(request: Request, svc: Annotated[ServiceState, Depends(service)]) -> Session:
    """The request's session; 401 without one, 403 on an unsafe request without its CSRF."""
    session = svc.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(401, "log in first (POST /api/login with your name and token)")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header; reload the page")
    return session


CurrentSession = Annotated[Session, Depends(current)]


def require(role: str, session: Session) -> None:
    """403 unless the session's person holds `role`."""
    if role not in session.roles:
        raise HTTPException(403, f"{session.name} does not hold the {role} role under the "
                                 "policy; ask an admin")


def require_any(session: Session) -> None:
    """403 unless the session's person holds some role (viewer or more)."""
    if not session.roles:
        raise HTTPException(403, f"{session.name} holds no role under the adopted policy; ask "
                                 "an admin to add them (viewer, approver, operator or admin)")


def reader(session: Annotated[Session, Depends(current)]) -> Session:
    """A logged-in person who may read (any role)."""
    require_any(session)
    return session


Reader = Annotated[Session, Depends(reader)]


class Login(BaseModel):
    """A login request: a registered person's name and token."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=512)


class Me(BaseModel):
    """Who is logged in, their roles and the CSRF token the page echoes."""

    name: str
    roles: list[str]
    csrf: str


router = APIRouter(prefix="/api", tags=["session"])


@router.post("/login")
def login(body: Login, request: Request, response: Response,
          svc: Annotated[ServiceState, Depends(service)]) -> Me:
    """Log in with your credential; sets a session cookie."""
    try:
        name = authenticate(svc.runner.deps.store, body.name, body.token)
    except ApprovalError as exc:
        svc.runner.deps.ledger.append("admin", "session", "login_refused",
                                      {"name": body.name, "channel": "chat"})
        raise HTTPException(401, str(exc)) from None
    svc.sessions.drop(request.cookies.get(COOKIE))
    sid, session = svc.sessions.create(name, roles(svc.runner, name))
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict",
                        secure=svc.secure_cookies, path="/")
    svc.runner.deps.ledger.append("admin", "session", "login", {"name": name,
                                                                "channel": "chat"})
    return Me(name=name, roles=sorted(session.roles), csrf=session.csrf)


@router.get("/me")
def me(session: CurrentSession) -> Me:
    """The logged-in person (the page reads its CSRF token here after a reload)."""
    return Me(name=session.name, roles=sorted(session.roles), csrf=session.csrf)


@router.post("/logout")
def logout(request: Request, response: Response, session: CurrentSession,
           svc: Annotated[ServiceState, Depends(service)]) -> dict[str, bool]:
    """End the session."""
    svc.sessions.drop(request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE, path="/")
    return {"ok": True}
