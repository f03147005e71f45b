#!/usr/bin/env bash
# make bench: the proxy against nginx and the bare upstream, in one interleaved run.
#
#   benches/run.sh                  full run (~10 min of measuring, plus builds)
#   benches/run.sh --quick          one short repeat of everything (harness development)
#   benches/run.sh profile [rest|llm] [N]
#                                   instructions per proxied request under callgrind
#                                   (N sequential requests on one connection)
#   benches/run.sh pool             the large-pool phase alone (100,000 keys against 3),
#                                   with BENCH_ARGS (e.g. "--reps 6 --seconds 8")
#   benches/run.sh tracking         the usage-tracking phase alone (on against off, /llm),
#                                   with BENCH_ARGS
#   benches/run.sh profile rest|llm load [S]
#                                   the same under load (wrk -c64 for S seconds), for
#                                   ours and for nginx, each alone under callgrind
#
# Results go to $CARGO_TARGET_DIR/bench-results/ (not committed); BENCH_KEEP=1 writes
# them to benches/results/ instead, for a run the docs cite.
#
# Environment:
#   CARGO_TARGET_DIR     where cargo builds (default: target)
#   BENCH_KEEP=1         write results to benches/results/ (committed) instead
#   BENCH_LITELLM=0      skip the comparison with LiteLLM's proxy (otherwise installed
#                        with pip into $CARGO_TARGET_DIR/litellm-venv on first use)
#   BENCH_ARGS           extra harness options, e.g. "--pin split --reps 5 --seconds 8",
#                        "--workers 1" (one shard for the proxy, one worker for nginx)
#   BENCH_MAX_LOAD       wait until the 1-minute load average is below this (default 0.5)
#   BENCH_QUIET_WAIT     ...for at most this many seconds (default 300), then run anyway
#                        (the load is recorded in the results either way)
#   BENCH_SKIP_BUILD=1   use the binaries already built
#   BENCH_POOL_KEYS=N    keys in the large-pool phase (default 100000; more shows on a
#                        machine with a large cache what 100,000 cost with a smaller one)
#   BENCH_PGO=0          plain release builds instead of profile-guided ones (scripts/pgo.sh,
#                        what `make dist` and the images ship); the results record which
#   CALLGRIND_OPTS       extra valgrind options for `profile`, e.g. --cache-sim=yes
#   BENCH_PROXY_ENV      "NAME=value,…": more settings for every proxy the harness starts
#                        (e.g. an allocator setting, for an A/B)
#   BENCH_PROFILE_POOL=1 `profile rest` with the large pool (BENCH_POOL_KEYS keys) instead of
#                        3 keys; with CALLGRIND_OPTS=--cache-sim=yes it counts the cache
#                        misses a request to a large pool adds
#   BENCH_CLIENT_KEY=1   `profile` sends a client key with a per-minute limit instead of a
#                        global proxy key
#
# Installs nginx, wrk and valgrind with apt-get when they are missing, and fails loudly
# when it cannot. Method and results: docs/BENCHMARKS.md; the runs the docs cite:
# benches/results/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MODE=run
if [[ "${1:-}" == "profile" ]]; then
    MODE=profile
    shift
elif [[ "${1:-}" == "pool" || "${1:-}" == "tracking" ]]; then
    MODE=$1
    shift
fi

say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[bench] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v taskset >/dev/null || need+=(util-linux)
[[ $MODE == profile ]] && { command -v valgrind >/dev/null || need+=(valgrind); }
if ((${#need[@]})); then
    say "installing ${need[*]}"
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing ${need[*]}: install them (Debian: apt-get install ${need[*]})"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
    # Debian's package may start a default nginx on port 80; the bench runs its own.
    if command -v service >/dev/null && [[ " ${need[*]} " == *" nginx "* ]]; then
        service nginx stop >/dev/null 2>&1 || true
    fi
fi
command -v wrk >/dev/null || die "wrk is still missing"
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || die "nginx is still missing"
export PATH=$PATH:/usr/sbin:/sbin
command -v cargo >/dev/null || die "cargo is missing (install the Rust toolchain)"

# 1,000 streams through a proxy need ~2,000 descriptors in the proxy, as many in nginx,
# and the client's and the upstream's own.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 8192)) || die "cannot raise the open-file limit to 8192 (ulimit -n is $(ulimit -n))"

# Where results go: an ignored folder unless this run is to be kept.
if [[ "${BENCH_KEEP:-}" == 1 ]]; then
    RESULTS=$ROOT/benches/results
else
    RESULTS=$CARGO_TARGET_DIR/bench-results
fi
mkdir -p "$RESULTS"

# --- LiteLLM, compared on /llm ------------------------------------------------------
LITELLM=()
if [[ $MODE == run && "${BENCH_LITELLM:-1}" != 0 ]]; then
    VENV=$CARGO_TARGET_DIR/litellm-venv
    if [[ ! -x $VENV/bin/litellm ]]; then
        say "installing LiteLLM's proxy into $VENV (pip install 'litellm[proxy]'; BENCH_LITELLM=0 skips it)"
        python3 -m venv "$VENV" || die "cannot make a Python venv (apt-get install python3-venv)"
        "$VENV/bin/pip" install -q 'litellm[proxy]' || die "pip install 'litellm[proxy]' failed"
    fi
    LITELLM=(--litellm "$VENV/bin/litellm")
fi

# --- builds ------------------------------------------------------------------------
BIN=$CARGO_TARGET_DIR/bench-bin
mkdir -p "$BIN"
# release <name> [cargo options]: the binary users get, copied to $BIN/api-key-rotator-<name>:
# profile-guided (scripts/pgo.sh) unless BENCH_PGO=0 or no llvm-profdata can be had, in
# which case a plain release build. The lightweight build's kind goes to $BIN/build-kind for
# the results (the enterprise one is of the same kind: the same llvm-profdata, or none).
release() {
    local name=$1 kind=/dev/null
    shift
    [[ $name == lightweight ]] && kind=$BIN/build-kind
    say "building the $name release binary (scripts/pgo.sh)"
    PGO=${BENCH_PGO:-1} scripts/pgo.sh --or-plain --kind-file "$kind" "$@" || return 1
    cp "$CARGO_TARGET_DIR/release/api-key-rotator" "$BIN/api-key-rotator-$name"
}
if [[ $MODE != profile && "${BENCH_SKIP_BUILD:-}" != 1 ]]; then
    release lightweight || die "the lightweight release build failed"
    # Redis rotation is half of what the enterprise run measures: trained too when Redis answers.
    if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
        export PGO_TRAIN_ENV="REDIS_URL=redis://127.0.0.1:6379/13"
    fi
    if [[ $MODE == pool || $MODE == tracking ]]; then
        : # the lightweight build is all these phases need
    elif ! release enterprise --features enterprise; then
        say "the enterprise build failed: its numbers will be reported as pending"
        rm -f "$BIN/api-key-rotator-enterprise"
    fi
    unset PGO_TRAIN_ENV
fi
if [[ "${BENCH_SKIP_BUILD:-}" != 1 ]]; then
    say "building the harness"
    cargo bench --no-run --bench harness --quiet 2>/dev/null || cargo bench --no-run --bench harness ||
        die "cannot build the harness"
fi
BUILD_KIND=$(cat "$BIN/build-kind" 2>/dev/null || echo plain)
[[ $MODE == profile || -x $BIN/api-key-rotator-lightweight ]] || die "no lightweight binary in $BIN (run without BENCH_SKIP_BUILD)"
HARNESS=$(cargo bench --no-run --bench harness --message-format=json 2>/dev/null |
    grep '"kind":\["bench"\]' | grep '"name":"harness"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x "$HARNESS" ]] || die "cannot find the harness executable"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rotator-bench.XXXXXX")
cleanup() {
    # Stop exactly the processes this run started (their pids are recorded).
    for f in "$WORK"/run-*/pids "$WORK"/pids; do
        [[ -f $f ]] || continue
        while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$f"
    done
    sleep 0.5
    for f in "$WORK"/run-*/pids "$WORK"/pids; do
        [[ -f $f ]] || continue
        while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$f"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# --- profile: instructions per request under callgrind -----------------------------
if [[ $MODE == profile ]]; then
    ROUTE=${1:-rest}
    LOAD=0
    LOAD_TAG=""
    N=5000
    if [[ ${2:-} == load ]]; then
        LOAD=1
        LOAD_TAG=-load
        SECS=${3:-10}
    else
        N=${2:-5000}
    fi
    command -v valgrind >/dev/null || die "valgrind is missing"
    # The binary users get (PGO unless BENCH_PGO=0, same optimisation), built with symbols
    # (the release profile strips them).
    export CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
    say "building the lightweight release binary with symbols (scripts/pgo.sh)"
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/profiling" PGO=${BENCH_PGO:-1} \
        scripts/pgo.sh --or-plain --kind-file "$WORK/build-kind" ||
        die "cannot build the profiling binary"
    BUILD_KIND=$(cat "$WORK/build-kind")
    unset CARGO_PROFILE_RELEASE_STRIP CARGO_PROFILE_RELEASE_DEBUG
    PROFILED=$CARGO_TARGET_DIR/profiling/release/api-key-rotator
    free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
    UP=$(free_port)
    "$HARNESS" upstream --port "$UP" --threads 1 >"$WORK/upstream.log" 2>&1 &
    echo $! >>"$WORK/pids"
    # callgrind <name> <command...>: starts the command under callgrind (counting off),
    # in an environment of PATH and the assignments in ENVV only.
    callgrind() {
        local name=$1
        shift
        env -i PATH="$PATH" "${ENVV[@]}" \
            valgrind --tool=callgrind ${CALLGRIND_OPTS:-} --instr-atstart=no --callgrind-out-file="$WORK/$name.out" \
            "$@" >"$WORK/$name.log" 2>&1 &
        VG=$!
        echo $VG >>"$WORK/pids"
    }
    # measure <name> <port>: 500 warm-up requests, then counts the measured load only;
    # sets COUNT (requests) and TOTAL (instructions), writes $WORK/<name>.{self,inclusive}.
    measure() {
        local name=$1 port=$2
        "$HARNESS" hammer --port "$port" --route "$ROUTE" --n 500
        callgrind_control -i on "$VG" >/dev/null
        if ((LOAD)); then
            COUNT=$("$HARNESS" saturate --port "$port" --route "$ROUTE" --seconds "$SECS" --work "$WORK")
        else
            "$HARNESS" hammer --port "$port" --route "$ROUTE" --n "$N"
            COUNT=$N
        fi
        callgrind_control -d "$VG" >/dev/null
        sleep 1
        local dump=$WORK/$name.out.1 # the dump asked for above (<name>.out is written at exit)
        [[ -s $dump ]] || die "callgrind wrote no dump for $name"
        callgrind_annotate --auto=no --threshold=100 "$dump" >"$WORK/$name.self" 2>/dev/null ||
            die "callgrind_annotate failed"
        callgrind_annotate --auto=no --threshold=100 --inclusive=yes "$dump" >"$WORK/$name.inclusive" 2>/dev/null || true
        TOTAL=$(sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' "$WORK/$name.self" | tr -d ,)
        [[ -n $TOTAL && $COUNT -gt 0 ]] || die "no instruction total or no requests for $name"
        cp "$dump" "$CARGO_TARGET_DIR/callgrind-$ROUTE$LOAD_TAG-$name.out"
    }
    top() { grep -v '^--\|^$' "$1" | sed -n '/PROGRAM TOTALS/,$p' | head -"$2"; }

    PORT=$(free_port)
    # Under load one shard, as nginx runs one process below: the same work per request.
    ENVV=(ADMIN_PASSWORD=bench-admin-password
        JWT_SECRET=bench-jwt-secret-0123456789abcdef0123456789abcdef
        GLOBAL_PROXY_KEYS=pk-bench-0123456789 BACKEND_PORT="$PORT" BIND_ADDRESS=127.0.0.1
        DATABASE_PATH="$WORK/profile.db" LOG_LEVEL="${LOG_LEVEL:-warn}")
    ((LOAD)) && ENVV+=(WORKER_THREADS=1)
    [[ -n ${USAGE_TRACKING:-} ]] && ENVV+=(USAGE_TRACKING="$USAGE_TRACKING")
    [[ -n ${REQUEST_LOG_SIZE:-} ]] && ENVV+=(REQUEST_LOG_SIZE="$REQUEST_LOG_SIZE")
    callgrind ours "$PROFILED"
    for _ in $(seq 1 600); do
        curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null || die "the proxy did not start under valgrind: $(tail -5 "$WORK/ours.log")"
    "$HARNESS" setup --port "$PORT" --upstream "$UP" >/dev/null
    if [[ ${BENCH_PROFILE_POOL:-} == 1 ]]; then
        say "filling the REST service with ${BENCH_POOL_KEYS:-100000} keys"
        "$HARNESS" fill --port "$PORT"
    fi
    if [[ -n ${BENCH_CLIENT_KEY:-} ]]; then
        # Requests with a client key that has a per-minute limit, not a global proxy key.
        TOKEN=$(curl -fs -X POST "http://127.0.0.1:$PORT/admin/login" -H 'Content-Type: application/json' \
            -d '{"username":"admin","password":"bench-admin-password"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
        HARNESS_PROXY_KEY=$(curl -fs -X POST "http://127.0.0.1:$PORT/admin/client-keys" \
            -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
            -d '{"name":"bench","rpm":1000000000}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["secret"])')
        export HARNESS_PROXY_KEY
    fi
    measure ours "$PORT"
    OURS=$((TOTAL / COUNT))
    OURS_COUNT=$COUNT
    set +o pipefail # `| head` below closes pipes early on purpose
    LEVEL_TAG=""
    [[ ${LOG_LEVEL:-warn} != warn ]] && LEVEL_TAG="-${LOG_LEVEL}"
    if ((!LOAD)); then
        OUT=$RESULTS/callgrind-$ROUTE$LEVEL_TAG-latest.txt
        {
            echo "# callgrind: $N sequential $ROUTE requests on one keep-alive connection (after 500 warm-up"
            echo "# requests), LOG_LEVEL=${LOG_LEVEL:-warn}, $BUILD_KIND build; proxy process only (user space)."
            echo "# instructions per request: $OURS"
            echo
            echo "## self cost"
            top "$WORK/ours.self" 60
            echo
            echo "## inclusive cost"
            top "$WORK/ours.inclusive" 80
        } >"$OUT"
        say "instructions per $ROUTE request: $OURS (report: $OUT)"
        exit 0
    fi

    # Under load: nginx as one process under callgrind, the same requests.
    NGX_PORT=$(free_port)
    NGX_CONF=$("$HARNESS" nginx-conf --dir "$WORK/nginx" --port "$NGX_PORT" --upstream "$UP")
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    ENVV=()
    callgrind nginx "$NGINX" -e "$WORK/nginx/logs/error.log" -p "$WORK/nginx" -c "$NGX_CONF"
    for _ in $(seq 1 600); do
        (echo >"/dev/tcp/127.0.0.1/$NGX_PORT") 2>/dev/null && break
        sleep 0.1
    done
    measure nginx "$NGX_PORT"
    NGX=$((TOTAL / COUNT))
    OUT=$RESULTS/callgrind-$ROUTE$LEVEL_TAG$LOAD_TAG-latest.txt
    RATIO=$(awk -v a="$OURS" -v b="$NGX" 'BEGIN{printf "%.2f", a / b}')
    {
        echo "# callgrind under load: wrk, 64 keep-alive connections, ${SECS} s against each process"
        echo "# under callgrind (after 500 warm-up requests); ours with one shard, nginx as one"
        echo "# process (master_process off); LOG_LEVEL=${LOG_LEVEL:-warn}; ours a $BUILD_KIND build; user space only."
        echo "# instructions per $ROUTE request: ours $OURS ($OURS_COUNT requests), nginx $NGX ($COUNT requests), ours / nginx $RATIO"
        echo
        echo "## ours: self cost"
        top "$WORK/ours.self" 50
        echo
        echo "## ours: inclusive cost"
        top "$WORK/ours.inclusive" 60
        echo
        echo "## nginx: self cost (Debian's binary has no symbols: libraries by name, nginx by address)"
        top "$WORK/nginx.self" 25
    } >"$OUT"
    say "instructions per $ROUTE request under load: ours $OURS, nginx $NGX, ours / nginx $RATIO (report: $OUT)"
    exit 0
fi

# --- pool, tracking: one phase alone -----------------------------------------------
if [[ $MODE == pool || $MODE == tracking ]]; then
    mkdir -p "$RESULTS"
    OUT=$RESULTS/$(date -u +%Y-%m-%dT%H%MZ)-$MODE
    if [[ $MODE == pool ]]; then
        say "measuring a pool of 100,000 keys against 3 keys"
    else
        say "measuring usage tracking on against off (/llm JSON and SSE)"
    fi
    # shellcheck disable=SC2086
    "$HARNESS" "$MODE" --light "$BIN/api-key-rotator-lightweight" --work "$WORK" --build "$BUILD_KIND" \
        "$@" ${BENCH_ARGS:-} >"$OUT.json" 2> >(tee "$OUT.log" >&2)
    sed -n '/^### /,$p' "$OUT.log" >"$OUT.md"
    rm -f "$OUT.log"
    say "results in $OUT.json and $OUT.md"
    exit 0
fi

# --- wait for a quiet machine ------------------------------------------------------
MAX_LOAD=${BENCH_MAX_LOAD:-0.5}
WAIT=${BENCH_QUIET_WAIT:-300}
waited=0
while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$MAX_LOAD" 'BEGIN{exit !(l>=m)}'; do
    if ((waited >= WAIT)); then
        say "load average still $(cut -d' ' -f1 /proc/loadavg) after ${WAIT}s: measuring anyway (recorded in the results)"
        break
    fi
    ((waited == 0)) && say "load average $(cut -d' ' -f1 /proc/loadavg) ≥ $MAX_LOAD: waiting up to ${WAIT}s for a quiet machine"
    sleep 10
    waited=$((waited + 10))
done

ENT=()
[[ -x $BIN/api-key-rotator-enterprise ]] && ENT=(--enterprise "$BIN/api-key-rotator-enterprise")
say "measuring (see docs/BENCHMARKS.md for the method)"
# The load generators run favoured (nice -10) so that on 2 shared cores they keep their
# schedule; the harness starts every server under test back at nice 0.
NICE=()
nice -n -10 true 2>/dev/null && NICE=(nice -n -10)
# shellcheck disable=SC2086
"${NICE[@]}" "$HARNESS" run --light "$BIN/api-key-rotator-lightweight" "${ENT[@]}" "${LITELLM[@]}" \
    --results "$RESULTS" --work "$WORK" --build "$BUILD_KIND" "$@" ${BENCH_ARGS:-}
say "results in $RESULTS"
