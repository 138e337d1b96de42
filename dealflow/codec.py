"""Payload encryption: every payload DealFlow writes to Temporal is AES-GCM encrypted.

The Temporal server stores, and its UI and CLI show, only ciphertext: customer
names, ID numbers, phones and bank accounts never reach it in clear
(docs/architecture.md §3.6, §4). Whoever holds a key decrypts: the worker, the
API, the CLI, the demo and the audit tools all build their client from
`data_converter()`; the API's codec endpoint (`dealflow/api/codec.py`) lends
the same codec to the Temporal UI and CLI for auditors and admins.

Encrypted payload (one per original payload):

    metadata  encoding           = "binary/encrypted"
              encryption-key-id  = <key id>           (clear: says which key to use)
              encryption-cipher  = "AES-256-GCM"      (or AES-128-GCM / AES-192-GCM)
    data      12-byte random nonce || AES-GCM(original Payload protobuf bytes) || 16-byte tag

The associated data binds the key id, so moving ciphertext under another key id
fails authentication instead of decrypting to garbage.

Keys: `DEALFLOW_CODEC_KEYS="kid1=BASE64,kid2=BASE64"` (comma or newline separated;
16, 24 or 32 random bytes each, 32 recommended). The first key encrypts; every
key decrypts, so rotation is: put the new key first, keep the old ones for as
long as histories (and archives) written with them must be readable. A payload
whose key id is not configured fails with `UnknownKeyId`, naming the key id.
`DEALFLOW_CODEC_KEYS=file:/path` reads the same text from a file.

Without `DEALFLOW_CODEC_KEYS` (a clean checkout: `make demo`, `make test`), every
process uses the same PUBLIC development key `dev-insecure` (below) and logs a
loud warning: the pipeline is exercised end to end, but that key protects
nothing. Production sets its own keys (`python -m dealflow.codec new-key`).

Payloads without our encoding (histories written before encryption was
enabled) pass through `decode` unchanged — except in the worker. Anyone who
can reach Temporal could otherwise send a deal a plaintext signal or an update
whose `actor` claims any role; the worker's codec (`refusing_plaintext()`)
turns every payload that arrives in clear into one of the encoding
`binary/plaintext-refused`, which no converter reads: the SDK drops such a
signal (logging it), rejects such an update before its validator, and fails
the task of a workflow started with such an input. Only a holder of a codec
key speaks to a deal. The audit tools, the replay gate and the codec endpoint
keep passing plaintext through, so histories written before encryption still
read and replay.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

__all__ = [
    "CodecError",
    "CodecKeyError",
    "DEV_KEY_ID",
    "ENCODING",
    "AesGcmCodec",
    "Keyring",
    "UnknownKeyId",
    "data_converter",
    "data_converter_for",
    "dev_keyring",
    "generate_key_spec",
    "is_encrypted",
    "keyring_from_spec",
    "load_keyring",
]

log = logging.getLogger(__name__)

ENCODING = b"binary/encrypted"
META_ENCODING = "encoding"
META_KEY_ID = "encryption-key-id"
META_CIPHER = "encryption-cipher"
NONCE_BYTES = 12
AAD_PREFIX = b"dealflow-codec-v1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_SIZES = {16: "AES-128-GCM", 24: "AES-192-GCM", 32: "AES-256-GCM"}


class CodecError(Exception):
    """A payload cannot be decrypted (altered, truncated, or the wrong key)."""


class CodecKeyError(CodecError, ValueError):
    """The key configuration is invalid. Messages never contain key material."""


class UnknownKeyId(CodecError, LookupError):
    def __init__(self, key_id: str, known: Sequence[str]) -> None:
        super().__init__(
            f"payload was encrypted with key id {key_id!r}, which is not configured "
            f"(configured: {', '.join(known) or 'none'}); add that key to DEALFLOW_CODEC_KEYS"
        )
        self.key_id = key_id


@dataclass(frozen=True)
class Keyring:
    """Key id -> key, in order; the first one encrypts."""

    keys: tuple[tuple[str, bytes], ...]
    source: str = "DEALFLOW_CODEC_KEYS"

    def __post_init__(self) -> None:
        if not self.keys:
            raise CodecKeyError("a keyring needs at least one key")
        seen: set[str] = set()
        for kid, key in self.keys:
            if not _KEY_ID.match(kid):
                raise CodecKeyError(
                    f"{self.source}: key id {kid!r} is not valid "
                    "(1-64 characters: letters, digits, '.', '_', '-')"
                )
            if kid in seen:
                raise CodecKeyError(f"{self.source}: key id {kid!r} appears twice")
            seen.add(kid)
            if len(key) not in _KEY_SIZES:
                raise CodecKeyError(
                    f"{self.source}: key {kid!r} is {len(key)} bytes; AES-GCM needs 16, 24 or "
                    "32 (32 recommended)"
                )

    @property
    def current(self) -> str:
        return self.keys[0][0]

    @property
    def key_ids(self) -> list[str]:
        return [kid for kid, _ in self.keys]

    def get(self, kid: str) -> bytes | None:
        return next((key for k, key in self.keys if k == kid), None)

    def __repr__(self) -> str:  # never show key material
        return f"Keyring(key_ids={self.key_ids!r}, source={self.source!r})"


def keyring_from_spec(spec: str, source: str = "DEALFLOW_CODEC_KEYS") -> Keyring:
    """Parse `kid1=BASE64,kid2=BASE64` (commas or newlines; `#` starts a comment line)."""
    keys: list[tuple[str, bytes]] = []
    for raw_line in spec.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            kid, sep, b64 = item.partition("=")
            if not sep or not kid.strip() or not b64.strip():
                raise CodecKeyError(
                    f"{source}: expected KEY_ID=BASE64_KEY entries separated by commas, "
                    f"got an entry starting with {item[:8]!r}…"
                )
            try:
                key = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise CodecKeyError(f"{source}: key {kid.strip()!r} is not valid base64") from None
            keys.append((kid.strip(), key))
    if not keys:
        raise CodecKeyError(f"{source}: no keys given")
    return Keyring(tuple(keys), source=source)


def generate_key_spec(key_id: str | None = None) -> str:
    """A fresh `KEY_ID=BASE64` entry with a random 256-bit key."""
    key = secrets.token_bytes(32)
    kid = key_id or "k" + hashlib.sha256(key).hexdigest()[:8]
    return f"{kid}={base64.b64encode(key).decode()}"


# The well-known DEVELOPMENT key, used when DEALFLOW_CODEC_KEYS is empty. It is
# public (it is in this file), so it protects nothing: it only keeps a clean
# checkout working end to end (`make demo`, `make test`, every process agreeing
# without configuration). The committed test histories are encrypted with it,
# and tests/histories/test-codec-key holds a copy, so they stay readable even if
# this default ever changes.
DEV_KEY_ID = "dev-insecure"
DEV_KEY_SPEC = f"{DEV_KEY_ID}=33A+ICHi/TTyq5cDiKlNdfmGoRZtX+gMrhBus0QQf7A="

_warned_dev_key = False


def dev_keyring() -> Keyring:
    """The development keyring, with a loud warning (once per process)."""
    global _warned_dev_key
    if not _warned_dev_key:
        _warned_dev_key = True
        log.warning(
            "DEALFLOW_CODEC_KEYS is not set: payloads are encrypted with the PUBLIC development "
            "key %r, which protects nothing. Set DEALFLOW_CODEC_KEYS (python -m dealflow.codec "
            "new-key) everywhere outside development.",
            DEV_KEY_ID,
            extra={"codec_key_id": DEV_KEY_ID},
        )
    return keyring_from_spec(DEV_KEY_SPEC, source="development default")


def load_keyring(spec: str) -> Keyring:
    """The keyring named by `spec` (`Settings.codec_keys`); the dev key if empty."""
    spec = spec.strip()
    if spec.startswith("file:"):
        path = Path(spec[len("file:") :]).expanduser()
        try:
            return keyring_from_spec(path.read_text(encoding="utf-8"), source=str(path))
        except OSError as e:
            raise CodecKeyError(f"DEALFLOW_CODEC_KEYS: cannot read {path}: {e.strerror}") from e
    if spec:
        return keyring_from_spec(spec)
    return dev_keyring()


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get(META_ENCODING) == ENCODING


# What the worker's codec makes of a payload that arrived in clear.
REFUSED_PLAINTEXT_ENCODING = b"binary/plaintext-refused"


class AesGcmCodec(PayloadCodec):
    """AES-GCM with a random 96-bit nonce per payload; the key id travels in clear."""

    def __init__(self, keyring: Keyring, *, refuse_plaintext: bool = False) -> None:
        self.keyring = keyring
        self.refuse_plaintext = refuse_plaintext
        self._ciphers = {kid: AESGCM(key) for kid, key in keyring.keys}

    def refusing_plaintext(self) -> AesGcmCodec:
        """The same keys, for a worker: a payload in clear decodes to one no
        converter reads (module docstring)."""
        return AesGcmCodec(self.keyring, refuse_plaintext=True)

    @property
    def key_ids(self) -> list[str]:
        return self.keyring.key_ids

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self.keyring.current
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(
            nonce, payload.SerializeToString(deterministic=True), AAD_PREFIX + kid.encode()
        )
        key = self.keyring.get(kid)
        assert key is not None
        return Payload(
            metadata={
                META_ENCODING: ENCODING,
                META_KEY_ID: kid.encode(),
                META_CIPHER: _KEY_SIZES[len(key)].encode(),
            },
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if not is_encrypted(payload):
            if self.refuse_plaintext:
                return Payload(metadata={META_ENCODING: REFUSED_PLAINTEXT_ENCODING})
            return payload
        kid = payload.metadata.get(META_KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise UnknownKeyId(kid, self.keyring.key_ids)
        data = payload.data
        if len(data) < NONCE_BYTES + 16:
            raise CodecError(f"encrypted payload (key id {kid!r}) is truncated")
        try:
            plain = cipher.decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], AAD_PREFIX + kid.encode()
            )
        except InvalidTag:
            raise CodecError(
                f"encrypted payload (key id {kid!r}) failed authentication: it was altered, "
                "or the key configured under that id is not the one it was encrypted with"
            ) from None
        out = Payload()
        out.ParseFromString(plain)
        return out


def data_converter(keys: Keyring | str) -> DataConverter:
    """The pydantic data converter with the AES-GCM codec: use it for every client.

    Failure messages and stack traces are moved into an encoded (hence encrypted)
    payload too: an exception text may quote a customer's data.
    """
    ring = keys if isinstance(keys, Keyring) else load_keyring(keys)
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=AesGcmCodec(ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def refusing_plaintext(converter: DataConverter) -> DataConverter:
    """`converter` for a worker: its codec refuses payloads that arrive in clear."""
    codec = converter.payload_codec
    if not isinstance(codec, AesGcmCodec):
        raise CodecError("a worker's data converter must carry DealFlow's AES-GCM codec")
    return dataclasses.replace(converter, payload_codec=codec.refusing_plaintext())


def data_converter_for(settings: object) -> DataConverter:
    """`data_converter` from a `Settings` (its `codec_keys`: `DEALFLOW_CODEC_KEYS`)."""
    return data_converter(str(getattr(settings, "codec_keys", "") or ""))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dealflow.codec new-key [KEY_ID]`: print a fresh DEALFLOW_CODEC_KEYS entry."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "new-key" or len(args) > 2:
        print("usage: python -m dealflow.codec new-key [KEY_ID]", file=sys.stderr)
        return 2
    print(generate_key_spec(args[1] if len(args) == 2 else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
