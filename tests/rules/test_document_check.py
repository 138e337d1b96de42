"""`dealflow.document_check`: crafted files, each judged by its structure."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, NumberObject

from dealflow import rules
from dealflow.document_check import (
    ContentProbe,
    DocumentLimits,
    check_document,
    store_checked_cleanup,
)
from dealflow.samples import sample_jpeg, sample_pdf, sample_png
from dealflow.storage.documents import (
    DocumentNotFound,
    DocumentStoreUnavailable,
    LocalDirectoryStore,
)
from dealflow.storage.documents.base import StoredObject, content_key

PDF, JPEG, PNG = "application/pdf", "image/jpeg", "image/png"
LIMITS = DocumentLimits(max_pages=5, max_pixels=1_000_000)


def check(content_type: str, data: bytes, limits: DocumentLimits = LIMITS) -> None:
    check_document(content_type, io.BytesIO(data), limits, file_name="scan.bin")


def refused(content_type: str, data: bytes, fragment: str) -> str:
    with pytest.raises(rules.RuleError) as caught:
        check(content_type, data)
    assert caught.value.kind == "invalid"
    assert caught.value.message.startswith("scan.bin "), caught.value.message
    assert fragment in caught.value.message, caught.value.message
    return caught.value.message


def written_pdf(pages: int, user_password: str | None = None, owner_password: str = "") -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    if user_password is not None:
        writer.encrypt(user_password, owner_password or None, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares `width`×`height`, with one tiny IDAT: nothing
    of that size is ever allocated to build it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def noisy_jpeg(size: int = 128) -> bytes:
    rng = random.Random(7)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (PDF, sample_pdf("a residence permit (copy)")),
        (PDF, sample_pdf("padded", size=64 * 1024)),
        (PDF, written_pdf(5)),
        (PDF, sample_pdf("bytes after the end") + b"deal-20260101 case"),
        # Encrypted against editing only: every viewer opens it without asking.
        (PDF, written_pdf(1, user_password="", owner_password="owner")),
        (JPEG, sample_jpeg("a licence")),
        (JPEG, noisy_jpeg()),
        (PNG, sample_png("a licence")),
        (PNG, png_header_only(1000, 1000)),
    ],
    ids=[
        "sample-pdf",
        "padded-pdf",
        "pypdf-5-pages",
        "pdf-trailing-bytes",
        "pdf-owner-password",
        "sample-jpeg",
        "noisy-jpeg",
        "sample-png",
        "png-at-the-pixel-limit",
    ],
)
def test_well_formed_files_within_the_limits_pass(content_type: str, data: bytes) -> None:
    check(content_type, data)


# --------------------------------------------------------------------------- refused


def test_a_pdf_header_followed_by_html_is_refused() -> None:
    html = b"<html><body><script>fetch('/api/deals')</script></body></html>\n"
    refused(PDF, b"%PDF-1.7\n" + html, "is not a readable PDF")
    # ...also when it ends as a PDF would.
    refused(PDF, b"%PDF-1.7\n" + html + b"%%EOF\n", "is not a readable PDF")


def test_a_pdf_with_a_broken_cross_reference_is_refused() -> None:
    good = sample_pdf("income")
    at = good.index(b"startxref\n") + len(b"startxref\n")
    broken = good[:at] + b"99" + good[at:]
    refused(PDF, broken, "is not a readable PDF")
    refused(PDF, good[: len(good) // 2], "is not a readable PDF")


def test_too_many_pages_are_refused() -> None:
    message = refused(PDF, written_pdf(6), "has 6 pages; the limit is 5")
    assert message == "scan.bin has 6 pages; the limit is 5"


def test_a_page_tree_declaring_a_million_pages_is_refused_unwalked() -> None:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    pages = writer.root_object["/Pages"].get_object()
    assert isinstance(pages, DictionaryObject)
    pages[NameObject("/Count")] = NumberObject(1_000_000)
    out = io.BytesIO()
    writer.write(out)
    refused(PDF, out.getvalue(), "has 1,000,000 pages; the limit is 5")


def test_a_page_tree_that_loops_is_refused() -> None:
    good = sample_pdf("one page")
    looping = good.replace(b"/Kids [3 0 R]", b"/Kids [2 0 R]")  # the same length: offsets hold
    assert looping != good
    refused(PDF, looping, "is not a readable PDF: Detected cyclic page references")


def test_a_pdf_without_pages_is_refused() -> None:
    refused(PDF, written_pdf(0), "without pages")


def test_a_password_protected_pdf_is_refused() -> None:
    refused(PDF, written_pdf(1, user_password="secret"), "password-protected PDF")


def test_a_truncated_png_is_refused() -> None:
    good = sample_png("licence")
    refused(PNG, good[: len(good) - 10], "is not a readable PNG image")
    refused(PNG, good[:20], "is not a readable PNG image")


def test_a_png_with_a_bad_checksum_is_refused() -> None:
    good = bytearray(sample_png("licence"))
    good[-20] ^= 0xFF  # inside the last chunks before IEND
    refused(PNG, bytes(good), "is not a readable PNG image")


def test_a_png_declaring_a_bomb_is_refused_from_its_header() -> None:
    # 10^10 pixels: Pillow's own guard; 1001×1000: ours.
    refused(PNG, png_header_only(100_000, 100_000), "decompression bomb")
    refused(PNG, png_header_only(1001, 1000), "1,001×1,000 pixels (1,001,000)")


def test_a_jpeg_of_garbage_is_refused() -> None:
    garbage = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00<html><script>alert(1)</script></html>\xff\xd9"
    refused(JPEG, garbage, "is not a readable JPEG image")


def test_a_truncated_jpeg_is_refused() -> None:
    good = noisy_jpeg()
    refused(JPEG, good[: len(good) // 2], "is not a readable JPEG image")


def test_a_jpeg_over_the_pixel_limit_is_refused() -> None:
    big = io.BytesIO()
    Image.new("L", (1100, 1000)).save(big, "JPEG")
    refused(JPEG, big.getvalue(), "1,100×1,000 pixels")


def test_the_type_claimed_is_the_type_checked() -> None:
    refused(JPEG, sample_png("licence"), "is not a readable JPEG image")
    refused(PDF, sample_jpeg("licence"), "is not a readable PDF")


def test_a_parser_complaint_quoting_bytes_stays_printable() -> None:
    message = refused(PDF, b"%PDF-1.7\n\x00\xff\xfe" * 200, "is not a readable PDF")
    assert message.isprintable() and len(message) < 300


# --------------------------------------------------------------------------- the store


def _store(tmp_path: Path) -> LocalDirectoryStore:
    return LocalDirectoryStore(tmp_path, signing_secret="s", api_base_url="http://127.0.0.1:1")


def _put(store: LocalDirectoryStore, data: bytes) -> tuple[ContentProbe, str]:
    probe = ContentProbe(store, [data[:7], data[7:]])
    stored = store.put_stream(probe, content_type=PDF, max_bytes=1 << 20)
    return probe, stored.key


def test_a_refused_upload_removes_only_bytes_it_added(tmp_path: Path) -> None:
    store = _store(tmp_path)
    polyglot = b"%PDF-1.7\n<html></html>\n"
    probe, key = _put(store, polyglot)
    assert not probe.existed and store.exists(key)
    stored = store.head(key)
    assert stored is not None
    with pytest.raises(rules.RuleError, match="poly.pdf is not a readable PDF"):
        store_checked_cleanup(store, stored, PDF, LIMITS, file_name="poly.pdf", existed=False)
    assert not store.exists(key)
    # The same bytes already in the store (recorded before these checks): kept.
    _put(store, polyglot)
    probe, key = _put(store, polyglot)
    assert probe.existed
    with pytest.raises(rules.RuleError):
        store_checked_cleanup(store, stored, PDF, LIMITS, file_name="poly.pdf", existed=True)
    assert store.exists(key)


def test_an_accepted_upload_stays(tmp_path: Path) -> None:
    store = _store(tmp_path)
    probe, key = _put(store, sample_pdf("income"))
    stored = store.head(key)
    assert stored is not None
    store_checked_cleanup(store, stored, PDF, LIMITS, file_name="income.pdf", existed=False)
    assert store.exists(key)


class _NoDeletes(LocalDirectoryStore):
    def delete(self, key: str) -> None:
        raise DocumentStoreUnavailable("the store is down")


def test_a_refusal_is_reported_even_when_the_bytes_cannot_be_removed(tmp_path: Path) -> None:
    store = _NoDeletes(tmp_path, signing_secret="s", api_base_url="http://127.0.0.1:1")
    probe, key = _put(store, b"%PDF-1.7\n<html></html>\n")
    stored = store.head(key)
    assert stored is not None and not probe.existed
    with pytest.raises(rules.RuleError, match="is not a readable PDF"):
        store_checked_cleanup(store, stored, PDF, LIMITS, file_name="poly.pdf", existed=False)
    assert store.exists(key)


def test_a_store_that_cannot_read_back_is_no_verdict(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gone = StoredObject(key=content_key("0" * 64), sha256="0" * 64, size=1, content_type=PDF)
    with pytest.raises(DocumentNotFound):
        store_checked_cleanup(store, gone, PDF, LIMITS, file_name="a.pdf", existed=False)
