"""What uploaded bytes are, whatever their name or header claims."""

from __future__ import annotations

_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def sniff_content_type(head: bytes) -> str:
    """The type the bytes say they are, whatever the file name or header claims."""
    for magic, content_type in _MAGIC:
        if head.startswith(magic):
            return content_type
    return "application/octet-stream"
