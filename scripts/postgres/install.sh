#!/usr/bin/env bash
# Install PostgreSQL from Debian's packages (`postgresql`: the server binaries under
# /usr/lib/postgresql/<version>/bin and the `postgres` system user) when no server is there yet.
# Idempotent; needs root (apt-get) only when something is missing. Prints nothing on success
# except what apt-get says; the bin folder is found again by start.sh.
set -euo pipefail
die() { echo "install.sh: $*" >&2; exit 1; }

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && id postgres >/dev/null 2>&1; then
  exit 0  # already installed
fi
[ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; need root to apt-get install postgresql"
command -v apt-get >/dev/null || die "no apt-get: install PostgreSQL (initdb, pg_ctl, psql) by hand"
echo "install.sh: apt-get install postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || die "apt-get update failed"
# The package creates and starts a system cluster on port 5432; it is not used (start.sh runs its own
# in a folder of its own), so it is stopped again where the package started it.
apt-get install -y -qq --no-install-recommends postgresql >/dev/null || die "apt-get install postgresql failed"
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
  done
fi
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || die "installed, but no initdb under /usr/lib/postgresql"
