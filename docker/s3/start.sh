#!/bin/sh
# Entry of the s3 service of docker/compose.yaml: Versity Gateway serving the
# volume's buckets/ directory over S3, with versioning (so Object Lock) kept in
# versions/. The root credentials come from their secret files.
set -eu

ROOT_ACCESS_KEY_ID="$(cat /run/secrets/s3_access_key)"
ROOT_SECRET_ACCESS_KEY="$(cat /run/secrets/s3_secret_key)"
export ROOT_ACCESS_KEY_ID ROOT_SECRET_ACCESS_KEY
mkdir -p /data/buckets "${VGW_VERSIONING_DIR:?}"
exec /app/versitygw posix /data/buckets
