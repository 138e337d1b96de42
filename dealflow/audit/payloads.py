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


def walk_payloads(message: Any, visit: Callable[[Payload], None]) -> None:
    """Call visit(payload) on every Payload inside a protobuf message, in place."""
    for field, value in message.ListFields():
        message_type = field.message_type
        if message_type is None:
            continue
        if message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            if value_field.message_type is None:
                continue
            for item in value.values():
                if value_field.message_type.full_name == _PAYLOAD:
                    visit(item)
                else:
                    walk_payloads(item, visit)
        elif field.is_repeated:
            for item in value:
                visit(item) if message_type.full_name == _PAYLOAD else walk_payloads(item, visit)
        elif message_type.full_name == _PAYLOAD:
            visit(value)
        else:
            walk_payloads(value, visit)


class _PayloadDecrypter:
    def __init__(self, keyring: codec.Keyring, strict: bool) -> None:
        self.codec = codec.AesGcmCodec(keyring)
        self.strict = strict
        self.errors: list[str] = []

    def __call__(self, payload: Payload) -> None:
        if not codec.is_encrypted(payload):
            return
        try:
            plain = self.codec.decrypt(payload)
        except codec.CodecError as error:
            if self.strict:
                raise
            self.errors.append(str(error))
            return
        payload.CopyFrom(plain)


def decode_events(
    events: Sequence[HistoryEvent], keyring: codec.Keyring, strict: bool = True
) -> tuple[list[HistoryEvent], list[str]]:
    """Copies of `events` with every encrypted payload decrypted (and the errors)."""
    decrypter = _PayloadDecrypter(keyring, strict)
    decoded = []
    for event in events:
        copy = HistoryEvent()
        copy.CopyFrom(event)
        walk_payloads(copy, decrypter)
        decoded.append(copy)
    return decoded, sorted(set(decrypter.errors))


def key_ids(events: Sequence[HistoryEvent]) -> list[str]:
    found: set[str] = set()

    def see(payload: Payload) -> None:
        if codec.is_encrypted(payload):
            found.add(payload.metadata.get(codec.META_KEY_ID, b"").decode("utf-8", "replace"))

    for event in events:
        walk_payloads(event, see)
    return sorted(found)


def value_of(payload: Payload) -> Any:
    """A decoded payload as a JSON value (what the pydantic converter wrote)."""
    encoding = payload.metadata.get("encoding", b"").decode("utf-8", "replace")
    if encoding == "json/plain":
        try:
            return json.loads(payload.data)
        except ValueError:
            return payload.data.decode("utf-8", "replace")
    if encoding == "binary/null":
        return None
    if encoding == codec.ENCODING.decode():
        key_id = payload.metadata.get(codec.META_KEY_ID, b"").decode("utf-8", "replace")
        return {"_encrypted": f"key id {key_id} not available"}
    return {"_encoding": encoding, "_bytes": len(payload.data)}


def first_value(container: Any) -> Any:
    items = list(container.payloads)
    return value_of(items[0]) if items else None


def failure_text(failure: Failure) -> str:
    message = failure.message
    if failure.HasField("encoded_attributes"):
        attrs = value_of(failure.encoded_attributes)
        if isinstance(attrs, dict) and attrs.get("message"):
            message = str(attrs["message"])
    kind = (
        failure.application_failure_info.type
        if failure.HasField("application_failure_info")
        else ""
    )
    text = f"{kind}: {message}" if kind else message
    if failure.HasField("cause"):
        text += f" (cause: {failure_text(failure.cause)})"
    return text
