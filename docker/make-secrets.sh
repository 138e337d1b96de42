#!/bin/sh
# The secrets docker/compose.yaml reads, made once: random passwords and keys,
# and the lenders file with fresh webhook secrets (from lenders.compose.toml).
#
#   sh docker/make-secrets.sh [DIRECTORY]      (default: docker/secrets)
#
# A file that exists is kept, so the database password of a stack that already
# ran still matches; delete a file to have it made anew. The directory is 0700
# and the files 0644: containers read them through bind mounts as their own
# users (postgres, temporal, uid 10001), other users of this host cannot reach
# them. docker/secrets/ is git-ignored.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/secrets}"
mkdir -p "$out"
chmod 700 "$out"

# N random bytes, base64; `token` keeps only URL- and shell-safe characters.
random() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
token() { random "$1" | tr -d '/+='; }

write() {
  if [ -e "$out/$1" ]; then
    echo "kept $out/$1"
    return
  fi
  printf '%s\n' "$2" >"$out/$1"
  chmod 644 "$out/$1"
  echo "made $out/$1"
}

write postgres_password "$(token 24)"
write database_url "postgresql://dealflow:$(cat "$out/postgres_password")@postgres:5432/dealflow"
write s3_access_key "dealflow$(token 6)"
write s3_secret_key "$(token 30)"
write s3_credentials "[default]
aws_access_key_id = $(cat "$out/s3_access_key")
aws_secret_access_key = $(cat "$out/s3_secret_key")"
write jwt_secret "$(token 48)"
write file_link_secret "$(token 48)"
# KEY_ID=BASE64 of a 256-bit key; add a new first line to rotate.
write codec_keys "compose-$(date +%Y%m%d)=$(random 32)"
write grafana_admin_password "$(token 18)"

if [ -e "$out/lenders.toml" ]; then
  echo "kept $out/lenders.toml"
else
  while IFS= read -r line; do
    case "$line" in
      "webhook_secret = "*) printf 'webhook_secret = "whsec_%s"\n' "$(random 32)" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done <"$here/lenders.compose.toml" >"$out/lenders.toml"
  chmod 644 "$out/lenders.toml"
  echo "made $out/lenders.toml"
fi
