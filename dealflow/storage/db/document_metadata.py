"""The metadata of each document recorded on a deal (the bytes are in the
document store)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from dealflow.models import DocumentRecord
from dealflow.storage.db.engine import insert_if_absent
from dealflow.storage.db.tables import DOCUMENTS, DocumentRow


def add_document(engine: Engine, deal_id: str, document: DocumentRecord) -> bool:
    """Record a document's metadata once per doc_id; True if new."""
    return insert_if_absent(
        engine,
        DOCUMENTS,
        {
            "doc_id": document.doc_id,
            "deal_id": deal_id,
            "kind": document.kind.value,
            "party": document.party.value,
            "file_name": document.file_name,
            "content_type": document.content_type,
            "size": document.size,
            "sha256": document.sha256,
            "storage_key": document.storage_key,
            "uploaded_by": document.uploaded_by,
            "uploaded_at": document.uploaded_at,
        },
    )


def list_documents(engine: Engine, deal_id: str) -> list[DocumentRow]:
    query = (
        select(DocumentRow)
        .where(col(DocumentRow.deal_id) == deal_id)
        .order_by(col(DocumentRow.uploaded_at), col(DocumentRow.doc_id))
    )
    with Session(engine) as session:
        return list(session.exec(query).all())
