#!/usr/bin/env bash
# make dist: builds both release binaries, checks that each one runs, and measures them.
#
# * Fully static (x86_64-unknown-linux-musl) when that Rust target and Debian's
#   musl-tools (musl-gcc) are installed, as in the Docker images; glibc otherwise. The
#   script says which.
# * Each binary: --version; a start on a temporary SQLite file, checked with its own
#   `healthcheck` subcommand (what the images' HEALTHCHECK runs); the enterprise one also
#   on MariaDB/MySQL + Redis when they answer (TEST_MYSQL_URL, TEST_REDIS_URL).
# * Profile-guided builds (scripts/pgo.sh) when llvm-profdata for rustc's LLVM can be had;
#   DIST_PGO=0 for plain ones.
# * Output: $CARGO_TARGET_DIR/dist/api-key-rotator-<version>-<build>-<libc>, and sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
dist="$target_dir/dist"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
mysql_url=${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}
redis_url=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
musl=x86_64-unknown-linux-musl

fail() {
    echo "dist: $*" >&2
    exit 1
}

if rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v musl-gcc >/dev/null; then
    libc=musl
    target_args=(--target "$musl")
    out_dir="$target_dir/$musl/release"
    export CC_x86_64_unknown_linux_musl=musl-gcc
    echo "== static musl build ($musl)"
else
    libc=glibc
    target_args=()
    out_dir="$target_dir/release"
    echo "== glibc build: the $musl target or musl-gcc is missing"
    echo "   (for a static binary: rustup target add $musl && apt-get install musl-tools)"
fi
mkdir -p "$dist"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts $1 with the extra environment in "$@" on a free port, waits until its own
# `healthcheck` passes, then stops it. Prints its start-up lines on failure.
check_serves() {
    local bin=$1 label=$2
    shift 2
    local port work pid ok=0
    port=$(free_port)
    work=$(mktemp -d)
    env -i PATH="$PATH" ADMIN_PASSWORD=dist-check-password \
        JWT_SECRET=dist-check-jwt-secret-0123456789abcdef GLOBAL_PROXY_KEYS=dist-check-key \
        BACKEND_PORT="$port" BIND_ADDRESS=127.0.0.1 LOG_LEVEL=info \
        DATABASE_PATH="$work/db.sqlite" "$@" \
        "$bin" serve >"$work/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
        if env -i BACKEND_PORT="$port" "$bin" healthcheck >/dev/null 2>&1; then
            ok=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [[ $ok != 1 ]]; then
        cat "$work/log" >&2
        rm -rf "$work"
        fail "$label did not become healthy"
    fi
    echo "   $label: healthy ($(grep -o 'Database Type: [a-z]*' "$work/log"), $(grep -o 'Cache Type: [a-z]*' "$work/log"))"
    rm -rf "$work"
}

# Builds one flavour and copies the binary to dist/: profile-guided (scripts/pgo.sh, as
# the images are) unless DIST_PGO=0 or no llvm-profdata can be had, which it says.
build() {
    local name=$1
    shift
    echo "== scripts/pgo.sh --or-plain --locked $* ${target_args[*]}"
    PGO=${DIST_PGO:-1} scripts/pgo.sh --or-plain --locked "$@" "${target_args[@]}" ||
        fail "the release build of $name failed"
    cp "$out_dir/api-key-rotator" "$dist/api-key-rotator-$version-$name-$libc"
}

# MySQL and Redis answer: Redis rotation is trained too (as `make bench` does) and the
# enterprise binary is checked on them.
services_up=0
scripts/test-enterprise.sh --check >/dev/null 2>&1 && services_up=1

build lightweight
if ((services_up)); then
    export PGO_TRAIN_ENV="REDIS_URL=${redis_url%/}/13"
fi
build enterprise --features enterprise
unset PGO_TRAIN_ENV

for name in lightweight enterprise; do
    bin="$dist/api-key-rotator-$version-$name-$libc"
    echo "== $name: $("$bin" --version)"
    check_serves "$bin" "$name on SQLite"
done

ent="$dist/api-key-rotator-$version-enterprise-$libc"
if ((services_up)); then
    # A database of its own, reused by every run (the check adds no rows).
    check_serves "$ent" "enterprise on MySQL + Redis" \
        DATABASE_URL="${mysql_url%/}/api_key_rotator_dist_check" REDIS_URL="${redis_url%/}/15"
else
    echo "   enterprise on MySQL + Redis: not checked, $mysql_url or $redis_url does not answer"
fi

echo "== sizes ($libc)"
for name in lightweight enterprise; do
    bin="$dist/api-key-rotator-$version-$name-$libc"
    bytes=$(stat -c %s "$bin")
    # A static(-pie) binary has no program interpreter; `ldd` succeeds on both kinds.
    if LC_ALL=C ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
        linkage="static"
    else
        linkage="dynamically linked"
    fi
    printf '   %-12s %5s MiB  %10d bytes  %s  %s\n' "$name" \
        "$(awk "BEGIN { printf \"%.1f\", $bytes / 1048576 }")" "$bytes" "$linkage" "$bin"
done
