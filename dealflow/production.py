"""The production rule: no process starts on a public development value.

A clean checkout works without configuration (`make demo`, `make test`): the
staff-token secret, the file-link secret, the codec key and the example
lenders' webhook secrets all have development defaults, and they are public —
they are in this repository. Anyone who knows them can mint an admin token,
forge a link to any document, decrypt every history, or answer for a lender.
So with `DEALFLOW_ENV=production` (the image and compose set it) every process
refuses to start while any of them is in use, while a secret is shorter than
32 bytes, while no lenders file is named, or while the API would offer the
development sign-in on a non-loopback address. Each offence is one line that
names the setting and never prints the value (docs/architecture.md §3.8).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

from dealflow.codec import DEV_KEY_SPEC, CodecKeyError, keyring_from_spec, load_keyring
from dealflow.config import (
    DEV_FILE_LINK_SECRET,
    DEV_JWT_SECRET,
    LendersFileError,
    Settings,
    load_lenders,
)

MIN_SECRET_BYTES = 32

# The webhook secrets of examples/lenders.toml: public, so never a lender's
# secret in production (tests/client/test_production.py keeps this list and the
# file in step).
DEVELOPMENT_WEBHOOK_SECRETS = frozenset(
    {
        "whsec_YWNtZS1hdXRvLWZpbmFuY2UtZGV2LXNlY3JldC0zMmI=",
        "whsec_YmV0YS1tb3Rvci1jcmVkaXQtZGV2LXNlY3JldC0zMmI=",
        "whsec_Y2F0aGF5LWNhci1sb2Fucy1kZXYtc2VjcmV0LTMyYnk=",
    }
)


class ProductionRefusal(Exception):
    """A production process would start on an unsafe setting; one line per setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _secret_problem(name: str, value: str, development_value: str) -> str | None:
    if value == development_value:
        return f"{name} is the public development value; set a secret of your own"
    if len(value.encode()) < MIN_SECRET_BYTES:
        return f"{name} is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def _codec_problems(spec: str) -> list[str]:
    if not spec.strip():
        return [
            "DEALFLOW_CODEC_KEYS is not set: payloads would be encrypted with the public "
            "development key (python -m dealflow.codec new-key makes one)"
        ]
    try:
        keyring = load_keyring(spec)
    except CodecKeyError as e:
        return [str(e)]
    development_keys = {key for _, key in keyring_from_spec(DEV_KEY_SPEC).keys}
    problems = []
    for kid, key in keyring.keys:
        if key in development_keys:
            problems.append(f"DEALFLOW_CODEC_KEYS: key {kid!r} is the public development key")
        elif len(key) < MIN_SECRET_BYTES:
            problems.append(
                f"DEALFLOW_CODEC_KEYS: key {kid!r} has {len(key)} bytes; use {MIN_SECRET_BYTES}"
            )
    return problems


def _webhook_secret_bytes(secret: str) -> int:
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True))
    except (binascii.Error, ValueError):
        return 0


def _lender_problems(settings: Settings) -> list[str]:
    if "lenders_file" not in settings.model_fields_set:
        return ["DEALFLOW_LENDERS_FILE is not set: name the lenders file of this deployment"]
    try:
        lenders = load_lenders(settings.lenders_file)
    except LendersFileError as e:
        return [f"DEALFLOW_LENDERS_FILE: {e}"]
    problems = []
    for lender in lenders.values():
        where = f"DEALFLOW_LENDERS_FILE ({settings.lenders_file}), lender {lender.id!r}"
        if lender.webhook_secret in DEVELOPMENT_WEBHOOK_SECRETS:
            problems.append(f"{where}: webhook_secret is a public development value")
        elif _webhook_secret_bytes(lender.webhook_secret) < MIN_SECRET_BYTES:
            problems.append(f"{where}: webhook_secret is shorter than {MIN_SECRET_BYTES} bytes")
    return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def production_problems(settings: Settings) -> list[str]:
    """Every reason `settings` may not run in production, one line each; [] if
    none or if this is not production."""
    if settings.env != "production":
        return []
    problems = [
        problem
        for problem in (
            _secret_problem("DEALFLOW_JWT_SECRET", settings.jwt_secret, DEV_JWT_SECRET),
            _secret_problem(
                "DEALFLOW_FILE_LINK_SECRET", settings.file_link_secret, DEV_FILE_LINK_SECRET
            ),
        )
        if problem
    ]
    problems += _codec_problems(settings.codec_keys)
    problems += _lender_problems(settings)
    if settings.development_signin and not _is_loopback(settings.api_host):
        problems.append(
            f"DEALFLOW_API_HOST is {settings.api_host}, not loopback, while the desk's "
            "development sign-in is on (the development DEALFLOW_JWT_SECRET and no "
            "DEALFLOW_JWKS_URL)"
        )
    return problems


def refuse_unsafe_production(settings: Settings) -> None:
    """Raise `ProductionRefusal` naming each unsafe setting (production only)."""
    problems = production_problems(settings)
    if problems:
        raise ProductionRefusal(problems)
