"""Document stores (docs/architecture.md §2): one small interface, two backends,
one backend a module.

* `LocalDirectoryStore` (`local.py`) — plain files under a directory (the
  default, `file://.data/documents`). Writes are atomic (temp file, fsync,
  `os.replace`, directory fsync), so a crash never leaves a partial object at
  a final key.
* `S3Store` (`s3.py`) — any S3 (AWS, MinIO, moto) through boto3, with
  server-side encryption, request checksums, retries and short timeouts.

The interface, its errors and the rules for keys are in `base.py`; processes
open their store with `store_from_settings` (`factory.py`).

The API is synchronous on purpose: activities and the API call it in threads.
"""

from dealflow.storage.documents.base import (
    DEFAULT_PREFIX,
    DocumentNotFound,
    DocumentStore,
    DocumentStoreError,
    DocumentStoreUnavailable,
    DocumentTooLarge,
    EmptyDocument,
    ObjectLockUnavailable,
    PreconditionFailed,
    StoredObject,
    content_key,
)
from dealflow.storage.documents.factory import open_store, store_from_settings
from dealflow.storage.documents.local import (
    LocalDirectoryStore,
    sign_local_url,
    verify_local_signature,
)
from dealflow.storage.documents.s3 import S3Store, make_s3_client

__all__ = [
    "DEFAULT_PREFIX",
    "DocumentNotFound",
    "DocumentStore",
    "DocumentStoreError",
    "DocumentStoreUnavailable",
    "DocumentTooLarge",
    "EmptyDocument",
    "LocalDirectoryStore",
    "ObjectLockUnavailable",
    "PreconditionFailed",
    "S3Store",
    "StoredObject",
    "content_key",
    "make_s3_client",
    "open_store",
    "sign_local_url",
    "store_from_settings",
    "verify_local_signature",
]
