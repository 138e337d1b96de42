#!/bin/sh
# One-shot of docker/compose.yaml (service temporal-schema, image
# temporalio/admin-tools): Temporal's two PostgreSQL databases, created when
# missing and brought to the schema of the image's version. Running it again
# changes nothing; after an image upgrade it applies the new versions.
# temporal-sql-tool reads SQL_PLUGIN, SQL_HOST, SQL_PORT, SQL_USER and
# SQL_PASSWORD from the environment; the password comes from its secret file.
set -eu

SQL_PASSWORD="$(cat "${SQL_PASSWORD_FILE:?the file holding the database password}")"
export SQL_PASSWORD
schema=/etc/temporal/schema/postgresql/v12
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT

for database in temporal temporal_visibility; do
  if temporal-sql-tool --db "$database" create-database 2>"$errors"; then
    echo "temporal-schema: database $database created"
  elif grep -q "already exists" "$errors"; then
    echo "temporal-schema: database $database exists"
  else
    cat "$errors" >&2
    exit 1
  fi
done

temporal-sql-tool --db temporal setup-schema -v 0.0
temporal-sql-tool --db temporal update-schema -d "$schema/temporal/versioned"
temporal-sql-tool --db temporal_visibility setup-schema -v 0.0
temporal-sql-tool --db temporal_visibility update-schema -d "$schema/visibility/versioned"
echo "temporal-schema: both databases are at the image's schema version"
