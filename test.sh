#!/usr/bin/env bash
# Run the whole test suite twice: against SQLite, then against PostgreSQL. Installs what the tests
# need: Debian's scep (scepclient), openssl, chromium and postgresql when missing (as root, via apt),
# and the Python test requirements into .venv. The PostgreSQL run uses a private throwaway cluster
# (initdb into a temporary folder, unix socket only) that is removed afterwards. Exits non-zero when
# either run fails. MDM_TEST_POSTGRES=0 skips the PostgreSQL run (a quick local iteration).
set -euo pipefail
cd "$(dirname "$0")"
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
need=()
command -v scepclient >/dev/null || need+=(scep)
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)
[ "${MDM_TEST_POSTGRES:-1}" = 0 ] || [ -n "$(pg_bindir)" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
python3 -m venv .venv 2>/dev/null || [ -x .venv/bin/python ]
stamp=.venv/.requirements-test.sha
want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
  echo "$want" > "$stamp"
fi

# Arguments naming test files or folders (./test.sh tests/protocol/test_push.py -x) replace the default "tests".
targets=(tests)
for arg in "$@"; do [ -e "${arg%%::*}" ] && targets=(); done

echo "== test suite on SQLite"
sqlite_rc=0
.venv/bin/python -m pytest "${targets[@]}" "$@" || sqlite_rc=$?
[ "${MDM_TEST_POSTGRES:-1}" = 0 ] && exit $sqlite_rc

echo "== test suite on PostgreSQL (browser tests ran on SQLite only)"
bin=$(pg_bindir)
pgdir=$(mktemp -d /tmp/mdm-test-pg.XXXXXX)
# initdb refuses to run as root: the cluster belongs to Debian's postgres user (or a user of our own).
owner_cmd=()
if [ "$(id -u)" = 0 ]; then
  owner=postgres
  id "$owner" >/dev/null 2>&1 || { owner=mdm-test-pg; id "$owner" >/dev/null 2>&1 || useradd --system --no-create-home "$owner"; }
  chown "$owner" "$pgdir"
  owner_cmd=(runuser -u "$owner" --)
fi
# (from $pgdir: the owner may not be allowed into this checkout's folder)
as_owner() { (cd "$pgdir" && "${owner_cmd[@]}" "$@"); }
stop_cluster() {
  as_owner "$bin/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$pgdir"
}
trap stop_cluster EXIT
as_owner "$bin/initdb" -D "$pgdir/data" -U mdm -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
# Throwaway data: durability settings off for speed; no TCP listener, only a socket in $pgdir.
as_owner "$bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -o \
  "-c listen_addresses='' -k $pgdir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
  start >/dev/null
pg_rc=0
MDM_TEST_POSTGRES_URL="postgresql+psycopg://mdm@/postgres?host=$pgdir" \
  .venv/bin/python -m pytest "${targets[@]}" --ignore=tests/browser "$@" || pg_rc=$?
[ $sqlite_rc = 0 ] || echo "test suite on SQLite failed (exit $sqlite_rc)" >&2
[ $pg_rc = 0 ] || echo "test suite on PostgreSQL failed (exit $pg_rc)" >&2
[ $sqlite_rc = 0 ] && [ $pg_rc = 0 ]
