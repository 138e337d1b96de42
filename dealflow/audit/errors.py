"""The error every audit command reports to the operator instead of a traceback."""

from __future__ import annotations


class AuditError(Exception):
    """An error the operator must act on: printed, exit status 2."""
