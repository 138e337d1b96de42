"""Staff authentication (docs/architecture.md §3.3): `Authorization: Bearer <JWT>`.

Development and tests: HS256 with `DEALFLOW_JWT_SECRET` (`starter.py token`
mints one). Production: set `DEALFLOW_JWKS_URL` and tokens are verified with
the identity provider's public keys (RS256/ES256/PS256/EdDSA, dealflow/api/jwks.py);
HS256 is then refused, and `DEALFLOW_JWT_AUDIENCE` and `DEALFLOW_JWT_ISSUER`
are required and checked (`aud`, `iss`), as the provider signs tokens for
other applications with the same keys. Claims: `sub` (the staff id) and
`roles` (a list of `Role` values), optionally the dealers claim
(`DEALFLOW_DEALERS_CLAIM`, default `dealers`: the dealer ids whose deals the
person may see; absent, all of them); `exp` and `iat` are required, and a token
may live (exp - iat) at most `DEALFLOW_JWT_MAX_LIFETIME_HOURS`. The actor of
every workflow update is built here, from the token alone: nothing in a
request body can change who acted.

A route declares who may call it once, as a dependency:
`actor: Annotated[Actor, Depends(require_roles(READ_ROLES, "read deals"))]`
authenticates the caller (401), checks the role (403) and hands the route
its actor.

Who may do what — the permission table, one place: staff actions and starting
a deal come from `dealflow.rules` (`ACTION_ROLES`, `START_DEAL_ROLES`,
`READ_ROLES`, the same tables the workflow's validators enforce); the two
document rights below are the API's own. `admin` may do everything; `auditor`
only reads.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from dealflow import rules
from dealflow.api.errors import Problem
from dealflow.api.jwks import JwksCache, JwksUnavailable, UnknownSigningKey
from dealflow.config import Settings
from dealflow.models import Action, Actor, Role
from dealflow.models.base import is_ref

# Reading deals (list, status) — every role.
READ_ROLES: frozenset[Role] = rules.READ_ROLES
# Starting a deal.
START_DEAL_ROLES: frozenset[Role] = rules.START_DEAL_ROLES
# Uploading a customer document is the record-document action.
UPLOAD_ROLES: frozenset[Role] = rules.ACTION_ROLES[Action.RECORD_DOCUMENT]
# Reading a customer document (personal data): who collects and checks them,
# and the auditors.
DOCUMENT_READ_ROLES: frozenset[Role] = rules.DOCUMENT_READ_ROLES

HS_ALGORITHMS = ["HS256"]
JWKS_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384", "EdDSA"]
LEEWAY_SECONDS = 30
_STAFF_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")

# Documents the scheme in OpenAPI (the "Authorize" button of /docs); the
# checks themselves are `authenticate` below, so every failure is a problem+json.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="staffToken",
    bearerFormat="JWT",
    description="A staff JWT with claims sub and roles (`starter.py token` mints one).",
)


class AuthError(Exception):
    """The token is missing, malformed, badly signed or expired: HTTP 401."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject, its DealFlow roles in token order,
    and the dealers whose deals it may see (None: every dealer)."""

    sub: str
    roles: tuple[Role, ...]
    dealers: rules.DealerScope = rules.ALL_DEALERS

    def actor(self, allowed: Iterable[Role], what: str) -> Actor:
        """The actor for an operation open to `allowed` (admin always), or 403."""
        allowed = frozenset(allowed)
        for role in self.roles:
            if role in allowed:
                return Actor(staff_id=self.sub, role=role)
        if Role.ADMIN in self.roles:
            return Actor(staff_id=self.sub, role=Role.ADMIN)
        mine = ", ".join(f"'{role.value}'" for role in self.roles)
        names = ", ".join(sorted(role.value for role in allowed | {Role.ADMIN}))
        raise Problem(
            403, f"role{'s' if len(self.roles) > 1 else ''} {mine} may not {what}; allowed: {names}"
        )


@dataclass(frozen=True)
class TokenPolicy:
    """What a staff token must carry besides a good signature."""

    # The `aud` and `iss` it must name; None: not checked (the HS256
    # development secret). A JWKS deployment must set both.
    audience: str | None = None
    issuer: str | None = None
    # exp - iat may not exceed this: a stolen token is good for a bounded time.
    max_lifetime_seconds: float = 12 * 3600
    leeway: int = LEEWAY_SECONDS
    # The claim listing the person's dealer ids (DEALFLOW_DEALERS_CLAIM).
    dealers_claim: str = "dealers"


class Authenticator:
    """Checks staff tokens: HS256 with the secret, or the identity provider's keys."""

    def __init__(
        self, secret: str, jwks: JwksCache | None = None, policy: TokenPolicy | None = None
    ) -> None:
        policy = policy or TokenPolicy()
        if not secret and jwks is None:
            raise ValueError("staff authentication needs DEALFLOW_JWT_SECRET or DEALFLOW_JWKS_URL")
        if jwks is not None and not (policy.audience and policy.issuer):
            raise ValueError(
                "DEALFLOW_JWKS_URL needs DEALFLOW_JWT_AUDIENCE and DEALFLOW_JWT_ISSUER"
            )
        self.secret = secret
        self.jwks = jwks
        self.policy = policy

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        jwks = None
        if settings.jwks_url:
            jwks = JwksCache(
                settings.jwks_url,
                timeout_seconds=settings.jwks_timeout_seconds,
                refetch_seconds=settings.jwks_refetch_seconds,
            )
        policy = TokenPolicy(
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            max_lifetime_seconds=settings.jwt_max_lifetime_hours * 3600,
            dealers_claim=settings.dealers_claim,
        )
        return cls(settings.jwt_secret, jwks, policy)

    @property
    def algorithms(self) -> list[str]:
        return JWKS_ALGORITHMS if self.jwks is not None else HS_ALGORITHMS

    async def verify(self, token: str) -> Principal:
        """Verify `token` (signature, exp, iat, nbf, aud, iss, lifetime) and read
        its claims. With a JWKS URL the key set may be fetched, on this loop."""
        header = self._header(token)
        if self.jwks is None:
            return self._claims(token, self.secret)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("the token's key id (kid) must be a string")
        try:
            key = await self.jwks.signing_key(kid)
        except JwksUnavailable as e:
            raise Problem(503, f"{e}; try again in a moment") from None
        except UnknownSigningKey as e:
            raise AuthError(str(e)) from None
        return self._claims(token, key.key)

    def decode(self, token: str) -> Principal:
        """`verify` without a network fetch: for the HS256 secret only."""
        if self.jwks is not None:
            raise RuntimeError("tokens of a JWKS deployment are checked with `await verify()`")
        self._header(token)
        return self._claims(token, self.secret)

    def _header(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise AuthError(f"malformed token: {e}") from None
        if header.get("alg") not in self.algorithms:
            raise AuthError(
                f"token algorithm {header.get('alg')!r} is not accepted; use "
                + ", ".join(self.algorithms)
            )
        return header

    def _claims(self, token: str, key: Any) -> Principal:
        policy = self.policy
        required = ["exp", "iat", "sub"]
        required += ["aud"] if policy.audience else []
        required += ["iss"] if policy.issuer else []
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=policy.audience,
                issuer=policy.issuer,
                leeway=policy.leeway,
                options={"require": required, "verify_aud": policy.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired; get a new one") from None
        except jwt.InvalidAudienceError:
            # Neither the expected nor the sent value: the answer says what is wrong, no more.
            raise AuthError("invalid token: it was issued for another application (aud)") from None
        except jwt.InvalidIssuerError:
            raise AuthError(
                "invalid token: it was issued by an issuer this API does not trust (iss)"
            ) from None
        except jwt.InvalidTokenError as e:
            raise AuthError(f"invalid token: {e}") from None
        lifetime = claims["exp"] - claims["iat"]
        if lifetime > policy.max_lifetime_seconds:
            raise AuthError(
                f"invalid token: it is valid for {lifetime / 3600:.4g} h (exp - iat); "
                f"this API accepts tokens of at most {policy.max_lifetime_seconds / 3600:g} h"
            )
        return principal_from_claims(claims, policy.dealers_claim)


def is_staff_id(candidate: str) -> bool:
    """Whether `candidate` may name a member of staff (a token's sub, an audit actor)."""
    return bool(_STAFF_ID.match(candidate))


def claim_at(claims: dict[str, Any], path: str) -> object:
    """The claim at a dotted path; a claim whose own name has dots wins."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def dealer_scope_of(claims: dict[str, Any], claim: str) -> rules.DealerScope:
    """The dealer ids the claim at `claim` lists; None when the claim is absent
    (every dealer). An empty list is a scope of no dealer, not all of them."""
    raw = claim_at(claims, claim)
    if raw is None:
        return rules.ALL_DEALERS
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list) or not all(isinstance(d, str) and is_ref(d) for d in raw):
        raise AuthError(f"the token's {claim} claim must be a list of dealer ids")
    return frozenset(raw)


def principal_from_claims(claims: dict[str, Any], dealers_claim: str = "dealers") -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _STAFF_ID.match(sub):
        raise AuthError("the token's sub claim must be a staff id of 1-64 letters, digits, ._@-")
    raw = claims.get("roles")
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise AuthError("the token's roles claim must be a list of role names")
    known = {role.value for role in Role}
    # An identity provider may put other applications' roles in the same claim.
    roles = tuple(dict.fromkeys(Role(name) for name in raw if name in known))
    if not roles:
        names = ", ".join(role.value for role in Role)
        raise Problem(403, f"the token grants no DealFlow role (roles: {names})")
    return Principal(sub=sub, roles=roles, dealers=dealer_scope_of(claims, dealers_claim))


def mint_token(
    secret: str,
    sub: str,
    roles: Iterable[Role | str],
    ttl: int = 3600,
    now: float | None = None,
    *,
    audience: str | None = None,
    issuer: str | None = None,
    dealers: Iterable[str] | None = None,
    dealers_claim: str = "dealers",
) -> str:
    """A development token: HS256, claims sub, roles, iat and exp (now + ttl
    seconds), and aud and iss when given (the API checks them once set); with
    `dealers`, the dealer ids it is scoped to, under `dealers_claim`."""
    issued = int(now if now is not None else time.time())
    names = [Role(role).value for role in roles]
    if not _STAFF_ID.match(sub):
        raise ValueError(f"sub {sub!r} must be 1-64 letters, digits or ._@-")
    if not names:
        raise ValueError("a token needs at least one role")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    payload: dict[str, Any] = {"sub": sub, "roles": names, "iat": issued, "exp": issued + ttl}
    if dealers is not None:
        scope = list(dict.fromkeys(dealers))
        if not all(is_ref(dealer) for dealer in scope):
            raise ValueError(f"dealer ids must be 1-64 letters, digits or ._/:- ({scope})")
        payload[dealers_claim] = scope
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm="HS256")


def needs_bearer_token(path: str) -> bool:
    """Whether a request for `path` must carry a staff token: the JSON API, but
    not lenders' links to files (they carry their own signature)."""
    return path.startswith("/api/") and not path.startswith("/api/files/")


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


async def dealer_scope(request: Request) -> rules.DealerScope:
    """The caller's dealers (None: all), as a route dependency; after the role check."""
    return (await authenticate(request)).dealers


async def authenticate(request: Request) -> Principal:
    """The caller, or a 401/403 problem. Cached on the request."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    auth: Authenticator = request.app.state.services.auth
    try:
        principal = await auth.verify(bearer_token(request))
    except AuthError as e:
        raise Problem(
            401, str(e), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None
    request.state.principal = principal
    return principal


RefusalHook = Callable[[Request, Exception], Awaitable[None]]


class RoleRequirement:
    """Who may call a route: the roles in `allowed` (admin always), to do `what`.

    Used as a FastAPI dependency it authenticates the caller (401), checks the
    role (403) and returns the actor. `on_refusal` runs before a refusal is
    answered, for a route that must do something about it first (the upload
    reads the rest of its body, so the client reads the answer).
    """

    def __init__(
        self, allowed: Iterable[Role], what: str, on_refusal: RefusalHook | None = None
    ) -> None:
        self.allowed = frozenset(allowed)
        self.what = what
        self.on_refusal = on_refusal

    def actor_of(self, principal: Principal) -> Actor:
        """The principal's actor under this requirement, or a 403 problem."""
        return principal.actor(self.allowed, self.what)

    async def __call__(self, request: Request) -> Actor:
        try:
            return self.actor_of(await authenticate(request))
        except Exception as refusal:
            if self.on_refusal is not None:
                await self.on_refusal(request, refusal)
            raise


def require_roles(
    allowed: Iterable[Role], what: str, on_refusal: RefusalHook | None = None
) -> RoleRequirement:
    """The dependency of a route open to `allowed` (and admin): `what` names the
    operation in the 403 answer ("role 'auditor' may not start a deal; ...")."""
    return RoleRequirement(allowed, what, on_refusal)


def route_requirement(route: object) -> RoleRequirement | None:
    """The role requirement among a route's dependencies (None: a token is all it needs)."""
    if not isinstance(route, APIRoute):
        return None
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, RoleRequirement):
            return dependency.call
    return None
