#!/usr/bin/env bash
# Runs every Verity test on a fresh machine: installs what the tests need (Debian packages,
# the pinned Python OpenTelemetry client), checks formatting and lints, builds, and runs the
# unit, conformance and end-to-end tests. Real services are started by the tests themselves
# on free loopback ports and stopped when they end.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { echo "== $*" >&2; }

# --- system packages -----------------------------------------------------------------------
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v mkfifo >/dev/null 2>&1 || missing+=(coreutils)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# librdkafka (built from source by the rdkafka crate) links OpenSSL for Kafka TLS and SASL.
[[ -e /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
# A real Prometheus for the dashboard tests.
command -v prometheus >/dev/null 2>&1 || [[ -x /usr/bin/prometheus ]] || missing+=(prometheus)
# A real syslog receiver for the syslog output's tests, with its TLS drivers.
command -v rsyslogd >/dev/null 2>&1 || missing+=(rsyslog)
[[ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so || -e /usr/lib/rsyslog/lmnsd_gtls.so ]] \
    || ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || missing+=(rsyslog-gnutls)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# --- Python OpenTelemetry SDK (real OTLP clients for the end-to-end tests) ------------------
log "preparing the Python OpenTelemetry client"
VERITY_PYTHON="$(scripts/python-env.sh | tail -n1)"
export VERITY_PYTHON
# Missing test prerequisites fail the run instead of skipping.
export VERITY_E2E_REQUIRE=1

# --- Kafka-protocol broker (tansu, in-memory storage) for the Kafka tests ---------------------
# It takes minutes to build, so it is installed once into a cache outside the repository.
TOOLS="${VERITY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/verity-tools}"
if [[ -z "${VERITY_TANSU:-}" ]]; then
    VERITY_TANSU="$TOOLS/tansu/bin/tansu"
    if [[ ! -x "$VERITY_TANSU" ]]; then
        log "installing the tansu broker into $TOOLS/tansu (once; several minutes)"
        cargo install tansu --version 0.6.0 --features dynostore --locked --root "$TOOLS/tansu" >&2
    fi
fi
export VERITY_TANSU

# --- checks, build, tests --------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build"
cargo build --workspace --all-targets --locked
log "cargo test"
if command -v cargo-nextest >/dev/null 2>&1; then
    # The crates have no doctests; nextest's summary is the run's closing line.
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
