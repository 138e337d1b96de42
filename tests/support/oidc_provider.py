"""A real OpenID Connect provider for the desk's sign-in tests.

The oidc-provider-mock package (Authlib's authorization server with a login
form where one types the subject) served over HTTP on a free loopback port,
behind a small tap that:
- holds the provider to PKCE: the mock issues codes without remembering the
  challenge, so the tap keeps each code's challenge and refuses a token
  request whose verifier does not match it, as a real provider would;
- can make the token endpoint fail, or flip a byte of the ID token it sends,
  for the tests of what the desk does then.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import werkzeug.serving
from authlib.oauth2.rfc7636 import create_s256_code_challenge

with warnings.catch_warnings():
    # The mock still imports Authlib's deprecated JOSE module; the desk does not.
    warnings.simplefilter("ignore", DeprecationWarning)
    import oidc_provider_mock

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


@dataclass
class ProviderTap:
    app: WsgiApp
    # code → the S256 challenge of the authorization request that got it.
    challenges: dict[str, str] = field(default_factory=dict)
    verified_verifiers: int = 0
    token_endpoint_fails: bool = False
    tamper_id_token: bool = False

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if path == "/oauth2/authorize" and method == "POST":
            return self._authorize(environ, start_response)
        if path == "/oauth2/token" and method == "POST":
            return self._token(environ, start_response)
        return self.app(environ, start_response)

    def _authorize(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        status, headers, body = _call(self.app, environ)
        location = dict((name.lower(), value) for name, value in headers).get("location", "")
        code = parse_qs(urlsplit(location).query).get("code")
        if code:
            self.challenges[code[0]] = query.get("code_challenge", [""])[0]
        start_response(status, headers)
        return [body]

    def _token(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        form = parse_qs(raw.decode())
        if self.token_endpoint_fails:
            return _answer(start_response, "500 INTERNAL SERVER ERROR", b"provider down")
        challenge = self.challenges.pop(form.get("code", [""])[0], "")
        verifier = form.get("code_verifier", [""])[0]
        if not challenge or create_s256_code_challenge(verifier) != challenge:
            refusal = {"error": "invalid_grant", "error_description": "PKCE verification failed"}
            return _answer(start_response, "400 BAD REQUEST", json.dumps(refusal).encode())
        self.verified_verifiers += 1
        status, headers, body = _call(self.app, environ)
        if self.tamper_id_token and status.startswith("200"):
            tokens = json.loads(body)
            head, payload, signature = tokens["id_token"].split(".")
            flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
            tokens["id_token"] = f"{head}.{payload}.{flipped}"
            body = json.dumps(tokens).encode()
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


def _call(app: WsgiApp, environ: Environ) -> tuple[str, list[tuple[str, str]], bytes]:
    seen: dict[str, Any] = {}

    def record(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.update(status=status, headers=list(headers))

    chunks = app(environ, record)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], body


def _answer(start_response: StartResponse, status: str, body: bytes) -> Iterable[bytes]:
    content_type = "application/json" if body.startswith(b"{") else "text/plain"
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


@dataclass
class OidcTestProvider:
    issuer: str
    tap: ProviderTap

    def add_user(self, sub: str, claims: dict[str, object]) -> None:
        """The account `sub` and the claims its ID tokens carry."""
        response = httpx.put(f"{self.issuer}/users/{quote(sub)}", json=claims, timeout=5)
        assert response.status_code == 204, response.text


@contextmanager
def oidc_provider() -> Iterator[OidcTestProvider]:
    """The provider on a free port of 127.0.0.1 until the block ends."""
    tap = ProviderTap(oidc_provider_mock.app(require_nonce=True))
    server = werkzeug.serving.make_server("127.0.0.1", 0, tap, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield OidcTestProvider(f"http://127.0.0.1:{server.server_port}", tap)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
