"""An identity provider's key endpoint for the staff-token tests: a real HTTP
server on a free loopback port serving a JWK set, with the private keys to
sign tokens under it. It counts the fetches of its set, can be told to rotate
in a new key, and can hang (accept the request, never answer) to stand for a
provider that does not respond."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.example.test/realms/staff"
AUDIENCE = "dealflow-api"


@dataclass
class JwksProvider:
    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    fetches: int = 0
    hang: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def document(self) -> dict[str, Any]:
        entries = []
        for kid, key in self.keys.items():
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            entry.update({"kid": kid, "use": "sig", "alg": "RS256"})
            entries.append(entry)
        return {"keys": entries}

    def token(self, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        """An RS256 token under key `kid` (or signed with `key`); a claim given as
        None is left out."""
        now = int(time.time())
        payload = {
            "sub": "li.credit",
            "roles": ["credit"],
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        signer = key or self.keys[kid]
        return jwt.encode(payload, signer, algorithm="RS256", headers={"kid": kid})


def _handler(provider: JwksProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            provider.fetches += 1
            if provider.hang.is_set():
                provider.released.wait(30)
                return
            body = json.dumps(provider.document()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def jwks_provider() -> Iterator[JwksProvider]:
    provider = JwksProvider()
    provider.add_key("k1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    server.daemon_threads = True
    provider.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        provider.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
