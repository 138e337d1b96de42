"""The API's own body models: what the document routes answer, and the
schema of the upload form (documented by hand: the route reads the multipart
body itself, as it streams)."""

from typing import Any

from pydantic import BaseModel, Field, field_validator

from dealflow.models import (
    ActionResult,
    DealStatus,
    DocumentKind,
    DocumentRecord,
    DocumentUploaded,
    FundingItem,
    Party,
)
from dealflow.models.base import ID_NUMBER_PATTERN, REF_MAX_LENGTH, REF_PATTERN


class DocumentInfo(BaseModel):
    doc_id: str
    kind: str
    party: str
    file_name: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: Any = Field(json_schema_extra={"type": "string", "format": "date-time"})

    @classmethod
    def from_record(cls, record: DocumentRecord) -> "DocumentInfo":
        return cls(
            doc_id=record.doc_id,
            kind=record.kind.value,
            party=record.party.value,
            file_name=record.file_name,
            content_type=record.content_type,
            size=record.size,
            sha256=record.sha256,
            uploaded_by=record.uploaded_by,
            uploaded_at=record.uploaded_at,
        )


class DocumentList(BaseModel):
    deal_id: str
    documents: list[DocumentInfo]


# A deal's status as the API answers it: a document's storage key stays inside
# (the store's layout is nobody's business, and a key is what a forged link
# would name), and a role sees the details only of the documents it may
# (`rules.status_for_roles`). The field stays, empty, for clients that read it.
class StatusDocument(DocumentRecord):
    storage_key: str = Field(
        default="",
        description="always empty: storage keys stay inside DealFlow",
        json_schema_extra={"deprecated": True},
    )

    @field_validator("storage_key", mode="before")
    @classmethod
    def _withheld(cls, _value: object) -> str:
        return ""


class FundingItemView(FundingItem):
    document: StatusDocument | None = None


class DealStatusView(DealStatus):
    documents: list[StatusDocument] = Field(default_factory=list)  # type: ignore[assignment]
    funding: list[FundingItemView] = Field(default_factory=list)  # type: ignore[assignment]


class ActionResultView(ActionResult):
    status: DealStatusView


class DocumentUploadedView(DocumentUploaded):
    status: DealStatusView = Field(description="the deal after the document was recorded")


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["kind", "party", "file"],
                    # The route refuses any other field (422), so the schema does.
                    "additionalProperties": False,
                    "properties": {
                        "kind": {"type": "string", "enum": [kind.value for kind in DocumentKind]},
                        "party": {"type": "string", "enum": [party.value for party in Party]},
                        "id_number": {
                            "type": "string",
                            # Empty is absent, as for every optional form field.
                            "pattern": f"^$|{ID_NUMBER_PATTERN}",
                            "description": "for an ID card: the number printed on it "
                            "(checked: 18 characters, birth date, check digit)",
                        },
                        "period_start": {
                            "type": "string",
                            "format": "date",
                            "description": "for a bank statement: the first day it covers",
                        },
                        "period_end": {
                            "type": "string",
                            "format": "date",
                            "description": "for a bank statement: the last day it covers",
                        },
                        "stipulation_code": {
                            "type": "string",
                            "maxLength": REF_MAX_LENGTH,
                            "pattern": f"^$|{REF_PATTERN}",
                            "description": "for a stipulation document: the lender's code",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PDF, JPEG or PNG (sniffed from the bytes, "
                            "then parsed: at most the policy's max_document_pages (200) "
                            "pages or max_image_pixels (50 million) pixels), "
                            "at most the policy's max_document_bytes (20 MiB); "
                            "send it last",
                        },
                    },
                },
                "encoding": {"file": {"contentType": "application/pdf, image/jpeg, image/png"}},
            }
        },
    }
}
