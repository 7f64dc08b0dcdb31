#!/usr/bin/env bash
# Run the whole test suite. Installs what the tests need: Debian's scep (scepclient), openssl and
# chromium when missing (as root, via apt), and the Python test requirements into .venv.
set -euo pipefail
cd "$(dirname "$0")"
need=()
command -v scepclient >/dev/null || need+=(scep)
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)
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
exec .venv/bin/python -m pytest tests "$@"
