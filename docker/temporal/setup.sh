#!/bin/sh
# One-shot of docker/compose.yaml (service temporal-setup): DealFlow's
# namespace and the search attributes its deals upsert (DealStage, LenderId,
# DealerId, Keyword). Without them the server refuses every new deal. Each
# step checks first, so running it again changes nothing.
# The `temporal` CLI reads TEMPORAL_ADDRESS (and TEMPORAL_TLS_*, TEMPORAL_API_KEY).
set -eu

namespace="${DEALFLOW_NAMESPACE:-dealflow}"
retention="${DEALFLOW_NAMESPACE_RETENTION:-30d}"
attempts="${DEALFLOW_SETUP_ATTEMPTS:-60}"

# A server still starting, or a namespace just created and not yet known to
# every service, answers errors for a few seconds: try again, once a second.
retry() {
  n=1
  until "$@"; do
    if [ "$n" -ge "$attempts" ]; then
      echo "temporal-setup: gave up after $attempts attempts: $*" >&2
      return 1
    fi
    n=$((n + 1))
    sleep 1
  done
}

retry temporal operator cluster health >/dev/null

if temporal operator namespace describe --namespace "$namespace" >/dev/null 2>&1; then
  echo "temporal-setup: namespace $namespace exists"
else
  retry temporal operator namespace create --namespace "$namespace" --retention "$retention"
  echo "temporal-setup: namespace $namespace created (retention $retention)"
fi

registered() {
  retry temporal operator search-attribute list --namespace "$namespace" | grep -qw "$1"
}

for name in DealStage LenderId DealerId; do
  if registered "$name"; then
    echo "temporal-setup: search attribute $name exists"
  else
    retry temporal operator search-attribute create \
      --namespace "$namespace" --name "$name" --type Keyword
    echo "temporal-setup: search attribute $name registered (Keyword)"
  fi
done
