"""How a rule says no: the kind of refusal decides the HTTP status."""

from __future__ import annotations

from typing import Literal

RuleKind = Literal["invalid", "conflict", "forbidden"]


class RuleError(ValueError):
    """A rule said no. `kind` maps to HTTP: invalid→422, conflict→409, forbidden→403."""

    def __init__(self, kind: RuleKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> RuleError:
    return RuleError("invalid", message)


def conflict(message: str) -> RuleError:
    return RuleError("conflict", message)
