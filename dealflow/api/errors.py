"""The error every route raises to answer with a problem (RFC 9457).

It imports nothing of the API, so any module (authentication included) can
raise it; `problems.py` turns it into the response.
"""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    """Answer `status` with `detail` (what is wrong and what the caller can do)."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra
