#!/usr/bin/env bash
# Creates (if missing) the Python virtualenv used by Verity's end-to-end tests and installs
# the pinned OpenTelemetry client from tests/python/requirements.txt into it.
#
#   VERITY_VENV   where the virtualenv lives (default: <repo>/.venv)
#   PYTHON        interpreter used to create it (default: python3)
#
# Idempotent: a stamp file inside the venv records the hash of requirements.txt (and the
# interpreter version); when it matches, nothing is installed. Progress goes to stderr;
# the last line on stdout is the venv's python path, so callers can do
#   PY="$(scripts/python-env.sh | tail -n1)"
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VERITY_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
REQ="$REPO/tests/python/requirements.txt"
STAMP="$VENV/.verity-requirements.stamp"
VPY="$VENV/bin/python"

log() { echo "python-env: $*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "error: $PYTHON not found (install python3, e.g. apt-get install -y python3 python3-venv)"
    exit 1
fi
[[ -f "$REQ" ]] || { log "error: $REQ not found"; exit 1; }

# A venv whose interpreter is gone or broken (e.g. the base python was removed) is rebuilt.
if [[ -d "$VENV" ]] && ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
    log "existing venv at $VENV is broken; recreating"
    rm -rf "$VENV"
fi

if [[ ! -x "$VPY" ]]; then
    log "creating venv at $VENV"
    if ! "$PYTHON" -m venv "$VENV" >&2; then
        log "error: '$PYTHON -m venv' failed (on Debian: apt-get install -y python3-venv)"
        rm -rf "$VENV"
        exit 1
    fi
fi

req_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"
py_version="$("$VPY" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"
want="$req_hash python-$py_version"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$want" ]]; then
    log "up to date ($VENV)"
else
    log "installing pinned packages from ${REQ#"$REPO"/}"
    rm -f "$STAMP"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$VPY" -m pip install --quiet --requirement "$REQ" >&2
    # Fail here rather than in a test if the install is unusable.
    "$VPY" -c 'import opentelemetry.sdk._logs, opentelemetry.exporter.otlp.proto.grpc._log_exporter, opentelemetry.exporter.otlp.proto.http._log_exporter' >&2
    echo "$want" >"$STAMP"
    log "installed ($VENV)"
fi

echo "$VPY"
