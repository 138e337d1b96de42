"""Whether uploaded bytes are the file their first bytes claim: a PDF, JPEG or
PNG that parses, within the page and pixel limits.

The magic bytes (`rules.sniff_content_type`) only say what a file claims to be:
`%PDF-` followed by HTML is not a PDF. `check_document` reads the whole
structure with a parser and refuses what does not parse, with a `RuleError`
(`invalid`, HTTP 422) naming the file and what is wrong:

- PDF (pypdf, strict): header, cross-reference table and trailer, the page
  tree walked to count its pages (at most `max_pages`). Content streams are not
  decoded. A PDF that needs a password to open is refused (lenders cannot read
  it); one encrypted only against editing or printing, which every viewer opens
  without asking, is accepted.
- JPEG (Pillow): markers and frame header, then the entropy-coded data decoded
  at 1/8 scale so a truncated or cut file fails without allocating the full
  image.
- PNG (Pillow): every chunk read and its CRC checked up to IEND; the pixels are
  not decompressed.
- Images: width × height at most `max_pixels`, read from the header before
  anything is decoded, so a header declaring 100000×100000 costs nothing.

`store_checked_cleanup` is the part that touches the store: it reads an
uploaded object back, checks it, and removes it when refused unless the store
held the same bytes before this upload (another deal may reference them).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError
from pypdf import PasswordType, PdfReader
from pypdf.generic import DictionaryObject, PdfObject

from dealflow import rules
from dealflow.models import DealPolicy
from dealflow.storage.documents import DocumentStore, DocumentStoreError
from dealflow.storage.documents.base import StoredObject, content_key

PDF = "application/pdf"
JPEG = "image/jpeg"
PNG = "image/png"
_PIL_FORMATS = {JPEG: "JPEG", PNG: "PNG"}
# Read back from the store into memory up to this size, to a temporary file beyond.
SPOOL_IN_MEMORY = 1024 * 1024
_MAX_REASON = 160

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    max_pages: int
    max_pixels: int

    @classmethod
    def from_policy(cls, policy: DealPolicy) -> DocumentLimits:
        return cls(max_pages=policy.max_document_pages, max_pixels=policy.max_image_pixels)


def check_document(
    content_type: str, file: IO[bytes], limits: DocumentLimits, *, file_name: str
) -> None:
    """Raise `rules.invalid` unless `file` (seekable) is a well-formed
    `content_type` file within `limits`."""
    if content_type == PDF:
        _check_pdf(file, limits, file_name)
    elif content_type in _PIL_FORMATS:
        _check_image(file, _PIL_FORMATS[content_type], limits, file_name)
    else:
        raise rules.invalid(f"{file_name}: {content_type} is not a type DealFlow can check")


def _check_pdf(file: IO[bytes], limits: DocumentLimits, file_name: str) -> None:
    try:
        reader = PdfReader(file, strict=True)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise rules.invalid(
                f"{file_name} is a password-protected PDF: lenders cannot open it; "
                "upload it without a password"
            )
        declared = _declared_page_count(reader)
        if declared is not None and declared > limits.max_pages:
            raise _too_many_pages(file_name, declared, limits)
        pages = len(reader.pages)
    except rules.RuleError:
        raise
    except Exception as e:  # a parser fed hostile bytes fails in many ways: all mean "refuse"
        raise rules.invalid(f"{file_name} is not a readable PDF: {_reason(e)}") from None
    if pages == 0:
        raise rules.invalid(f"{file_name} is a PDF without pages")
    if pages > limits.max_pages:
        raise _too_many_pages(file_name, pages, limits)


def _declared_page_count(reader: PdfReader) -> int | None:
    """The page tree's own /Count: refuses a huge tree before walking it."""
    pages = reader.root_object.get("/Pages")
    tree = pages.get_object() if isinstance(pages, PdfObject) else None
    count = tree.get("/Count") if isinstance(tree, DictionaryObject) else None
    count = count.get_object() if isinstance(count, PdfObject) else None
    return count if isinstance(count, int) else None


def _too_many_pages(file_name: str, pages: int, limits: DocumentLimits) -> rules.RuleError:
    return rules.invalid(f"{file_name} has {pages:,} pages; the limit is {limits.max_pages:,}")


def _check_image(file: IO[bytes], fmt: str, limits: DocumentLimits, file_name: str) -> None:
    what = f"{file_name} is not a readable {fmt} image"
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning: our limit below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file, formats=[fmt]) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise _too_many_pixels(file_name, width, height, limits)
                image.verify()
            if fmt == "JPEG":
                _decode_small(file)
    except rules.RuleError:
        raise
    except UnidentifiedImageError:
        raise rules.invalid(f"{what}: its bytes do not have a {fmt} image's structure") from None
    except Image.DecompressionBombError:
        raise rules.invalid(
            f"{file_name} declares more pixels than Pillow will open (a decompression bomb); "
            f"the limit is {limits.max_pixels:,}"
        ) from None
    except Exception as e:
        raise rules.invalid(f"{what}: {_reason(e)}") from None


def _decode_small(file: IO[bytes]) -> None:
    """Decode a JPEG's whole scan at 1/8 scale: truncation and broken markers
    fail, in 1/64 of the memory of the full image."""
    file.seek(0)
    with Image.open(file, formats=["JPEG"]) as image:
        width, height = image.size
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.load()


def _too_many_pixels(
    file_name: str, width: int, height: int, limits: DocumentLimits
) -> rules.RuleError:
    return rules.invalid(
        f"{file_name} is {width:,}×{height:,} pixels ({width * height:,}); "
        f"the limit is {limits.max_pixels:,}"
    )


def _reason(e: Exception) -> str:
    """The parser's complaint, short and printable (it may quote the file's bytes)."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


# --------------------------------------------------------------------------- the store


class ContentProbe(Iterator[bytes]):
    """Passes an upload's chunks through to `put_stream`, hashing them; once
    they end — inside `put_stream`, before it stores anything — notes whether
    the store already held these bytes (`existed`), so a refused upload removes
    only what it added itself."""

    def __init__(self, store: DocumentStore, chunks: Iterable[bytes]) -> None:
        self._store = store
        self._chunks = iter(chunks)
        self._hasher = hashlib.sha256()
        self.existed = True  # until proven otherwise: never remove what we cannot vouch for

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.existed = self._store.exists(content_key(self._hasher.hexdigest()))
            raise
        self._hasher.update(chunk)
        return chunk


def store_checked_cleanup(
    store: DocumentStore,
    stored: StoredObject,
    content_type: str,
    limits: DocumentLimits,
    *,
    file_name: str,
    existed: bool,
) -> None:
    """Check the object as stored (blocking: run it off the event loop); when it
    is refused, delete it unless it `existed` before this upload, then raise."""
    try:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as copy:
            for chunk in store.open(stored.key):
                copy.write(chunk)
            copy.seek(0)
            check_document(content_type, copy, limits, file_name=file_name)
    except rules.RuleError:
        if not existed:
            _remove_refused(store, stored.key)
        raise


def _remove_refused(store: DocumentStore, key: str) -> None:
    """Best effort: the refusal is what the uploader must hear; bytes left
    behind are referenced by no deal and never sent anywhere."""
    try:
        store.delete(key)
    except DocumentStoreError as e:
        log.warning("could not remove refused upload %s: %s", key, type(e).__name__)
