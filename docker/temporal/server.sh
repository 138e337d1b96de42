#!/bin/sh
# Entry of the temporal service of docker/compose.yaml: the database password
# from its secret file into the variable the image's configuration reads, then
# the image's own entrypoint.
set -eu

POSTGRES_PWD="$(cat "${POSTGRES_PWD_FILE:?the file holding the database password}")"
export POSTGRES_PWD
exec /etc/temporal/entrypoint.sh "$@"
