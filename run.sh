#!/usr/bin/env bash
# Start the MDM server: installs Python dependencies into .venv, creates the database, CA and TLS
# certificate on first run, prints the URL (and the first administrator's credentials), then serves.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv 2>/dev/null || [ -x .venv/bin/python ]
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
exec .venv/bin/python -m mdm.run "$@"
