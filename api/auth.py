"""Who may ask: bearer tokens with a role (read ⊂ operator ⊂ admin), and optional anonymous reads.

``require_role("operator")`` is the dependency a route (or a router) declares; it answers 401 with
``WWW-Authenticate: Bearer`` when no valid token came (and anonymous reads do not cover the route),
403 when the token's role is too small. The token itself is never logged: only its name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.tokens import Role, TokenFile, role_allows

log = logging.getLogger(__name__)

# Declares the scheme in OpenAPI and parses the header; the decisions are ours (auto_error off).
bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="A token from `mieruka token create`, sent as `Authorization: Bearer <token>`")


@dataclass(frozen=True, slots=True)
class Auth:
    """How the app checks requests: ``tokens`` (None: no token file) and whether reads need one."""

    tokens: TokenFile | None = None
    anonymous_read: bool = False

    @classmethod
    def open_reads(cls) -> Auth:
        """Anonymous reads, no tokens: the demo's setting (and tests' that are not about auth)."""
        return cls(None, anonymous_read=True)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a token's name and role, or anonymous (name None, role read)."""

    name: str | None
    role: Role


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def require_role(role: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency that lets a request through only with a token of ``role`` or above (or, for
    ``read`` with anonymous reads on, with no token at all)."""

    async def check(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        auth: Auth = request.app.state.auth
        header = request.headers.get("authorization")
        if header is None:
            if auth.anonymous_read and role == "read":
                return Caller(None, "read")
            raise _unauthorized(f"this needs a bearer token with role '{role}' or above "
                                "(Authorization: Bearer <token>; see mieruka token create)")
        if credentials is None or not credentials.credentials:
            raise _unauthorized("the Authorization header is not 'Bearer <token>'", "invalid_request")
        record = auth.tokens.lookup(credentials.credentials) if auth.tokens is not None else None
        if record is None:
            log.info("refused an unknown or revoked token for %s %s", request.method, request.url.path)
            raise _unauthorized("the bearer token is not valid (unknown or revoked)", "invalid_token")
        if not role_allows(record.role, role):
            log.info("token '%s' (role %s) refused for %s %s: needs %s", record.name, record.role,
                     request.method, request.url.path, role)
            raise HTTPException(403, f"token '{record.name}' has role '{record.role}'; this needs '{role}' "
                                     "or above")
        return Caller(record.name, record.role)

    check.__name__ = f"require_{role}"
    return check
