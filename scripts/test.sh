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
# A real syslog receiver for the syslog output's tests, with both of its TLS drivers: the tests
# load lmnsd_gtls (rsyslog-gnutls) and lmnsd_ossl (rsyslog-openssl).
command -v rsyslogd >/dev/null 2>&1 || [[ -x /usr/sbin/rsyslogd ]] || missing+=(rsyslog)
has_rsyslog_module() { compgen -G "/usr/lib/*/rsyslog/$1.so" >/dev/null || [[ -e /usr/lib/rsyslog/$1.so ]]; }
has_rsyslog_module lmnsd_gtls || missing+=(rsyslog-gnutls)
has_rsyslog_module lmnsd_ossl || missing+=(rsyslog-openssl)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for module in lmnsd_gtls lmnsd_ossl; do
    has_rsyslog_module "$module" || { log "rsyslog's $module.so is still missing after the install"; exit 1; }
done
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# --- Python OpenTelemetry SDK (real OTLP clients for the end-to-end tests) ------------------
log "preparing the Python OpenTelemetry client"
VERITY_PYTHON="$(scripts/python-env.sh | tail -n1)"
export VERITY_PYTHON
# Missing test prerequisites fail the run instead of skipping.
export VERITY_E2E_REQUIRE=1

# --- Kafka-protocol broker (tansu, in-memory storage) for the Kafka tests ---------------------
# It takes minutes to build, so it is installed once into a cache outside the repository, and
# the build runs in the background beside the workspace build: both are mostly single-crate
# compiles near their ends, so together they keep the two cores busier than one after the other.
# opt-level 1 builds in about half the time of the default 3 and is ample for a test broker.
TOOLS="${VERITY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/verity-tools}"
tansu_pid=""
if [[ -z "${VERITY_TANSU:-}" ]]; then
    VERITY_TANSU="$TOOLS/tansu/bin/tansu"
    if [[ ! -x "$VERITY_TANSU" ]]; then
        mkdir -p "$TOOLS"
        tansu_log="$TOOLS/tansu-build.log"
        log "building the tansu broker into $TOOLS/tansu in the background (once; log: $tansu_log)"
        (
            start=$SECONDS
            env -u RUSTC_WORKSPACE_WRAPPER CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
                cargo install tansu --version 0.6.0 --features dynostore --locked --root "$TOOLS/tansu" \
                >"$tansu_log" 2>&1
            echo "tansu build: $((SECONDS - start)) s" >>"$tansu_log"
        ) &
        tansu_pid=$!
    fi
fi
export VERITY_TANSU

# --- checks, build, tests --------------------------------------------------------------------
# Each phase logs its wall time, so a slow CI run shows where the time went.
phase_start=$SECONDS
phase() {
    log "$1 (previous phase: $((SECONDS - phase_start)) s; total: $SECONDS s)"
    phase_start=$SECONDS
}
phase "cargo fmt --check"
cargo fmt --all -- --check
# One build, linted as it compiles: the workspace's crates go through clippy-driver with
# warnings denied (scripts/rustc-with-clippy); the test run below reuses every artifact because
# it sees the same wrapper and the same features.
export RUSTC_WORKSPACE_WRAPPER="$REPO/scripts/rustc-with-clippy"
phase "cargo build (with clippy, warnings denied)"
cargo build --workspace --all-targets --locked
if [[ -n "$tansu_pid" ]]; then
    phase "waiting for the tansu build"
    if ! wait "$tansu_pid" || [[ ! -x "$VERITY_TANSU" ]]; then
        cat "$tansu_log" >&2
        log "building tansu failed"
        exit 1
    fi
    tail -n1 "$tansu_log" >&2
fi
phase "cargo test"
if command -v cargo-nextest >/dev/null 2>&1; then
    # The crates have no doctests; nextest's summary is the run's closing line.
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
phase "done"
