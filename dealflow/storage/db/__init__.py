"""The database: the deal read model, the webhook inbox, document metadata, the
notification outbox, compensations and HTTP idempotency keys.

Sync sqlmodel on SQLite (default) or PostgreSQL (by URL). The workflow history
is the source of truth; everything written here is either a projection of it
or an inbox/outbox around it, so every writer is idempotent and safe to retry.
Each function opens its own short transaction: callers (activities, the API)
never hold a session across awaits.

Schema changes go through alembic (`dealflow/storage/migrations`), run with
`python -m dealflow.storage.db upgrade [--url URL]` or `migrate(url)`.
"""

from dealflow.storage.db.desk_sessions import (
    end_desk_session,
    live_desk_session,
    open_desk_session,
)
from dealflow.storage.db.document_metadata import add_document, list_documents
from dealflow.storage.db.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    dispose_engine,
    make_engine,
    normalise_url,
)
from dealflow.storage.db.idempotency import (
    forget_idempotency_key,
    get_idempotency_key,
    remember_idempotency_key,
)
from dealflow.storage.db.inbox import (
    StoreOutcome,
    WebhookIn,
    WebhookMark,
    WebhookStatus,
    get_webhook,
    mark_webhook,
    pending_webhooks,
    store_webhook,
    write_inbox,
)
from dealflow.storage.db.migrate import MIGRATIONS_DIR, alembic_config, current_revision, migrate
from dealflow.storage.db.outbox import (
    add_notification,
    mark_notification_sent,
    record_compensation,
    unsent_notifications,
)
from dealflow.storage.db.read_model import (
    DealMark,
    customer_names,
    deal_marks,
    deal_summary,
    get_deal,
    list_deals,
    open_by_stage,
    overdue_by_stage,
    pending_actions_of,
    pending_work,
    upsert_deal,
    waiting_by_stage,
)
from dealflow.storage.db.reports import (
    applications_between,
    closures_between,
    moves_between,
    pending_by_stage,
)
from dealflow.storage.db.tables import (
    COMPENSATIONS,
    DEAL_CLOSURES,
    DEAL_TRANSITIONS,
    DEALS,
    DESK_SESSIONS,
    DOCUMENTS,
    IDEMPOTENCY_KEYS,
    INBOX,
    LENDER_DECISIONS,
    OUTBOX,
    CompensationRow,
    DealClosureRow,
    DealRow,
    DealTransitionRow,
    DeskSessionRow,
    DocumentRow,
    IdempotencyKeyRow,
    InboxRow,
    LenderDecisionRow,
    OutboxRow,
    UTCDateTime,
    count_rows,
)

__all__ = [
    "COMPENSATIONS",
    "DEAL_CLOSURES",
    "DEAL_TRANSITIONS",
    "DEALS",
    "DOCUMENTS",
    "DESK_SESSIONS",
    "IDEMPOTENCY_KEYS",
    "INBOX",
    "LENDER_DECISIONS",
    "MIGRATIONS_DIR",
    "OUTBOX",
    "SQLITE_BUSY_TIMEOUT_MS",
    "CompensationRow",
    "DealClosureRow",
    "DealRow",
    "DealTransitionRow",
    "DocumentRow",
    "DeskSessionRow",
    "IdempotencyKeyRow",
    "end_desk_session",
    "live_desk_session",
    "open_desk_session",
    "InboxRow",
    "LenderDecisionRow",
    "OutboxRow",
    "StoreOutcome",
    "UTCDateTime",
    "WebhookIn",
    "WebhookMark",
    "WebhookStatus",
    "add_document",
    "add_notification",
    "alembic_config",
    "applications_between",
    "closures_between",
    "count_rows",
    "current_revision",
    "deal_summary",
    "dispose_engine",
    "forget_idempotency_key",
    "get_deal",
    "deal_marks",
    "DealMark",
    "get_idempotency_key",
    "get_webhook",
    "customer_names",
    "list_deals",
    "pending_actions_of",
    "pending_by_stage",
    "open_by_stage",
    "overdue_by_stage",
    "pending_work",
    "waiting_by_stage",
    "list_documents",
    "make_engine",
    "mark_notification_sent",
    "mark_webhook",
    "moves_between",
    "migrate",
    "normalise_url",
    "pending_webhooks",
    "record_compensation",
    "remember_idempotency_key",
    "store_webhook",
    "unsent_notifications",
    "upsert_deal",
    "write_inbox",
]
