"""Payloads in a history: find them, decrypt them with the codec keys, read them as JSON.

History files keep payloads as they are on the server, encrypted; every audit
command that reads what a deal did decodes copies of the events here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent

from dealflow import codec

_PAYLOAD = Payload.DESCRIPTOR.full_name


def walk_payloads(msg: Any, fn: Callable[[Payload], None]) -> None:
    """Call fn(payload) on every Payload inside a protobuf message, in place."""
    for fd, value in msg.ListFields():
        mt = fd.message_type
        if mt is None:
            continue
        if mt.GetOptions().map_entry:
            vfd = mt.fields_by_name["value"]
            if vfd.message_type is None:
                continue
            for v in value.values():
                if vfd.message_type.full_name == _PAYLOAD:
                    fn(v)
                else:
                    walk_payloads(v, fn)
        elif fd.is_repeated:
            for v in value:
                fn(v) if mt.full_name == _PAYLOAD else walk_payloads(v, fn)
        elif mt.full_name == _PAYLOAD:
            fn(value)
        else:
            walk_payloads(value, fn)


class _PayloadDecrypter:
    def __init__(self, keyring: codec.Keyring, strict: bool) -> None:
        self.codec = codec.AesGcmCodec(keyring)
        self.strict = strict
        self.errors: list[str] = []

    def __call__(self, p: Payload) -> None:
        if not codec.is_encrypted(p):
            return
        try:
            plain = self.codec.decrypt(p)
        except codec.CodecError as e:
            if self.strict:
                raise
            self.errors.append(str(e))
            return
        p.CopyFrom(plain)


def decode_events(
    events: Sequence[HistoryEvent], keyring: codec.Keyring, strict: bool = True
) -> tuple[list[HistoryEvent], list[str]]:
    """Copies of `events` with every encrypted payload decrypted (and the errors)."""
    dec = _PayloadDecrypter(keyring, strict)
    out = []
    for e in events:
        c = HistoryEvent()
        c.CopyFrom(e)
        walk_payloads(c, dec)
        out.append(c)
    return out, sorted(set(dec.errors))


def key_ids(events: Sequence[HistoryEvent]) -> list[str]:
    found: set[str] = set()

    def see(p: Payload) -> None:
        if codec.is_encrypted(p):
            found.add(p.metadata.get(codec.META_KEY_ID, b"").decode("utf-8", "replace"))

    for e in events:
        walk_payloads(e, see)
    return sorted(found)


def value_of(p: Payload) -> Any:
    """A decoded payload as a JSON value (what the pydantic converter wrote)."""
    enc = p.metadata.get("encoding", b"").decode("utf-8", "replace")
    if enc == "json/plain":
        try:
            return json.loads(p.data)
        except ValueError:
            return p.data.decode("utf-8", "replace")
    if enc == "binary/null":
        return None
    if enc == codec.ENCODING.decode():
        kid = p.metadata.get(codec.META_KEY_ID, b"").decode("utf-8", "replace")
        return {"_encrypted": f"key id {kid} not available"}
    return {"_encoding": enc, "_bytes": len(p.data)}


def first_value(payloads: Any) -> Any:
    items = list(payloads.payloads)
    return value_of(items[0]) if items else None


def failure_text(f: Failure) -> str:
    msg = f.message
    if f.HasField("encoded_attributes"):
        attrs = value_of(f.encoded_attributes)
        if isinstance(attrs, dict) and attrs.get("message"):
            msg = str(attrs["message"])
    kind = f.application_failure_info.type if f.HasField("application_failure_info") else ""
    text = f"{kind}: {msg}" if kind else msg
    if f.HasField("cause"):
        text += f" (cause: {failure_text(f.cause)})"
    return text
