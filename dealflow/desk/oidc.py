"""The desk as an OpenID Connect relying party: discovery, the authorization
code exchange with PKCE, and the ID token checks.

Authlib supplies the protocol pieces (the PKCE challenge, the provider
metadata rules, the ID token claim rules: issuer, audience, authorized party,
expiry, nonce) and joserfc, the JOSE library Authlib is built on, verifies
the signature with the provider's published keys. The HTTP calls are plain
httpx with a bounded timeout each: Authlib's own httpx integration is on its
way to another HTTP package and adds nothing the three calls here need.

Whatever goes wrong with the provider becomes a `ProviderError` (it could not
be reached, or answered nonsense: 502) or a `SignInRefused` (it, or our checks
of what it sent, said no: 401/403); the sign-in page shows either, and
nothing is signed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from dealflow.api.errors import Problem
from dealflow.api.security import (
    AuthError,
    Principal,
    claim_at,
    is_staff_id,
    principal_from_claims,
)
from dealflow.config import Settings
from dealflow.models import Role

# Every call to the provider: the browser is waiting on the other end.
PROVIDER_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# Discovery documents and key sets change rarely; a key set is fetched again
# at once when a token names a key it does not hold (the provider rotated).
METADATA_TTL_SECONDS = 3600.0
KEYS_TTL_SECONDS = 3600.0
KEYS_REFETCH_MIN_SECONDS = 30.0
# A provider's answer is a small JSON document; more is not an answer.
MAX_RESPONSE_BYTES = 512 * 1024
# Asymmetric only: the client secret must never be able to sign an ID token.
SIGNING_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
CLOCK_LEEWAY_SECONDS = 30
# Long enough for PKCE's 43-128 character verifier and to be unguessable.
RANDOM_LENGTH = 48


class ProviderError(Exception):
    """The identity provider could not be reached or answered something unusable."""


class SignInRefused(Exception):
    """The provider, or the checks of what it sent, refused this sign-in."""

    def __init__(self, message: str, status_code: int = 401) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    signing_algorithms: tuple[str, ...]


@dataclass(frozen=True)
class PendingSignIn:
    """What the callback must find again: kept by the browser between the legs."""

    state: str
    nonce: str
    verifier: str
    next_path: str

    @classmethod
    def start(cls, next_path: str) -> PendingSignIn:
        return cls(
            state=generate_token(RANDOM_LENGTH),
            nonce=generate_token(RANDOM_LENGTH),
            verifier=generate_token(RANDOM_LENGTH),
            next_path=next_path,
        )


class OidcProvider:
    """The organisation's provider, as the settings name it."""

    def __init__(self, settings: Settings) -> None:
        if not settings.oidc_issuer or not settings.oidc_client_id:
            raise ValueError("OIDC sign-in needs DEALFLOW_OIDC_ISSUER and DEALFLOW_OIDC_CLIENT_ID")
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self.client_secret = settings.oidc_client_secret or None
        self.scopes = settings.oidc_scopes
        self.roles_claim = settings.oidc_roles_claim
        self.dealers_claim = settings.dealers_claim
        self.name = provider_name(settings)
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: tuple[float, KeySet] | None = None

    async def metadata(self) -> ProviderMetadata:
        """The provider's endpoints, from its discovery document (cached)."""
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata[0] < METADATA_TTL_SECONDS:
            return self._metadata[1]
        document = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        metadata = _parse_metadata(document, self.issuer)
        self._metadata = (now, metadata)
        return metadata

    def authorization_url(
        self, metadata: ProviderMetadata, pending: PendingSignIn, redirect_uri: str
    ) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": create_s256_code_challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if urlsplit(metadata.authorization_endpoint).query else "?"
        return f"{metadata.authorization_endpoint}{separator}{query}"

    async def exchange(self, code: str, pending: PendingSignIn, redirect_uri: str) -> Principal:
        """Trade the code for tokens, check the ID token, and say who signed in."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier,
            "client_id": self.client_id,
        }
        # A confidential client authenticates with HTTP Basic (the default
        # method of the spec); a public client is held to PKCE alone.
        auth = httpx.BasicAuth(self.client_id, self.client_secret) if self.client_secret else None
        tokens = await self._post_token(metadata.token_endpoint, form, auth)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise ProviderError("the provider's token answer has no ID token")
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str):
            access_token = None
        claims = await self.verified_claims(metadata, id_token, pending.nonce, access_token)
        return self.principal(claims)

    def principal(self, claims: dict[str, Any]) -> Principal:
        """The staff member and DealFlow roles of verified ID token claims."""
        names = _role_names(claim_at(claims, self.roles_claim), self.roles_claim)
        staff_id = _staff_id(claims)
        if not is_staff_id(staff_id):
            raise SignInRefused(
                f"your account at {self.name} has no usable staff id: its preferred_username "
                "or sub must be 1-64 letters, digits or ._@-",
                status_code=403,
            )
        try:
            dealers = claim_at(claims, self.dealers_claim)
            return principal_from_claims(
                {"sub": staff_id, "roles": names, self.dealers_claim: dealers}, self.dealers_claim
            )
        except Problem:
            raise SignInRefused(
                f"your account at {self.name} has no DealFlow role in its "
                f"'{self.roles_claim}' claim; ask for one of: "
                + ", ".join(role.value for role in Role),
                status_code=403,
            ) from None
        except AuthError as refusal:
            raise SignInRefused(str(refusal), status_code=403) from None

    async def verified_claims(
        self,
        metadata: ProviderMetadata,
        id_token: str,
        nonce: str,
        access_token: str | None,
    ) -> dict[str, Any]:
        """The claims of `id_token` once its signature (the provider's published
        keys), issuer, audience, authorized party, expiry and nonce check out."""
        keys = await self._key_set(metadata, refresh=False)
        try:
            try:
                token = jwt.decode(id_token, keys, algorithms=metadata.signing_algorithms)
            except InvalidKeyIdError:
                keys = await self._key_set(metadata, refresh=True)
                token = jwt.decode(id_token, keys, algorithms=metadata.signing_algorithms)
            claims = CodeIDToken(
                token.claims,
                token.header,
                options={
                    "iss": {"essential": True, "value": metadata.issuer},
                    "aud": {"essential": True, "value": self.client_id},
                    "exp": {"essential": True},
                    "nonce": {"essential": True, "value": nonce},
                },
                params={"nonce": nonce, "client_id": self.client_id, "access_token": access_token},
            )
            claims.validate(leeway=CLOCK_LEEWAY_SECONDS)
        except JoseError as e:
            raise SignInRefused(f"the provider's ID token failed its checks: {e}") from None
        return dict(claims)

    async def _key_set(self, metadata: ProviderMetadata, *, refresh: bool) -> KeySet:
        now = time.monotonic()
        if self._keys is not None:
            fetched_at, keys = self._keys
            fresh = now - fetched_at < KEYS_TTL_SECONDS
            # A token naming an unknown key may not make us hammer the provider.
            if fresh and (not refresh or now - fetched_at < KEYS_REFETCH_MIN_SECONDS):
                return keys
        document = await self._get_json(metadata.jwks_uri)
        try:
            keys = KeySet.import_key_set(document, parameters={"use": "sig"})  # type: ignore[arg-type]
        except (JoseError, KeyError, TypeError, ValueError) as e:
            raise ProviderError(f"the provider's signing keys are unusable: {e}") from None
        self._keys = (now, keys)
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=PROVIDER_TIMEOUT) as http:
                response = await http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise ProviderError(f"{self.name} could not be reached ({_describe(e)})") from None
        if response.status_code != 200:
            raise ProviderError(f"{self.name} answered {url} with HTTP {response.status_code}")
        return _json_object(response, self.name)

    async def _post_token(
        self, url: str, form: dict[str, str], auth: httpx.BasicAuth | None
    ) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=PROVIDER_TIMEOUT, auth=auth) as http:
                response = await http.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise ProviderError(f"{self.name} could not be reached ({_describe(e)})") from None
        answer = _json_object(response, self.name)
        if response.status_code == 200:
            return answer
        error = answer.get("error")
        if response.status_code in (400, 401) and isinstance(error, str):
            description = answer.get("error_description")
            detail = f"{error}: {description}" if isinstance(description, str) else error
            raise SignInRefused(f"{self.name} refused the sign-in ({detail[:300]})")
        raise ProviderError(f"{self.name}'s token endpoint answered HTTP {response.status_code}")


def provider_name(settings: Settings) -> str:
    """What the desk calls the provider: its configured name, else the issuer's host."""
    issuer = settings.oidc_issuer or ""
    return settings.oidc_provider_name or urlsplit(issuer).hostname or issuer


def _parse_metadata(document: dict[str, Any], issuer: str) -> ProviderMetadata:
    metadata = OpenIDProviderMetadata(document)
    try:
        metadata.validate_issuer()
        metadata.validate_authorization_endpoint()
        metadata.validate_token_endpoint()
        metadata.validate_jwks_uri()
    except ValueError as e:
        raise ProviderError(f"the provider's discovery document is unusable: {e}") from None
    # OpenID Connect Discovery §4.3: the document must be the issuer's own.
    if str(document["issuer"]).rstrip("/") != issuer:
        raise ProviderError(
            f"the discovery document names issuer {document['issuer']!r}, not {issuer!r}"
        )
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(document.get(name), str):
            raise ProviderError(f"the provider's discovery document has no {name}")
    offered = document.get("id_token_signing_alg_values_supported")
    algorithms = tuple(
        alg
        for alg in (offered if isinstance(offered, list) else ["RS256"])
        if alg in SIGNING_ALGORITHMS
    )
    if not algorithms:
        raise ProviderError(
            "the provider signs ID tokens with none of " + ", ".join(SIGNING_ALGORITHMS)
        )
    return ProviderMetadata(
        issuer=str(document["issuer"]),
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        signing_algorithms=algorithms,
    )


def _json_object(response: httpx.Response, provider: str) -> dict[str, Any]:
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise ProviderError(f"{provider} sent an answer of {len(response.content)} bytes")
    try:
        answer = response.json()
    except ValueError:
        raise ProviderError(
            f"{provider} answered HTTP {response.status_code} with something not JSON"
        ) from None
    if not isinstance(answer, dict):
        raise ProviderError(f"{provider} answered with JSON that is not an object")
    return answer


def _role_names(value: object, claim: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return list(value)
    raise SignInRefused(f"the ID token's '{claim}' claim is not a list of role names")


def _staff_id(claims: dict[str, Any]) -> str:
    """The readable login name when it is a valid staff id, else the subject.

    The staff id goes into every audit record the person makes, so it is held
    to the API's rule for a token's sub."""
    preferred = claims.get("preferred_username")
    if isinstance(preferred, str) and is_staff_id(preferred):
        return preferred
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else ""


def _describe(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "no answer in time"
    return type(error).__name__
