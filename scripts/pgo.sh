#!/usr/bin/env bash
# A profile-guided (PGO) release build of the proxy:
#
#   scripts/pgo.sh [--or-plain] [--kind-file F] [cargo build options]
#                                      cargo options e.g. --features enterprise, --target T
#
# 1. builds an instrumented binary (-Cprofile-generate);
# 2. runs it under the bench's workload (`harness train`: /proxy and /llm requests, SSE
#    streams, refused requests, with LOG_LEVEL warn and info) against the bench's upstream;
#    PGO_TRAIN_ENV="K=V ..." trains once more with that extra environment (REDIS_URL);
# 3. merges the profiles with llvm-profdata;
# 4. builds the release binary with them (-Cprofile-use), where `cargo build --release
#    <options>` puts it.
#
# The compiler then lays out and inlines the request path as the workload runs it: on the
# 2-core bench machine, 5–6 % less CPU per proxied request (docs/BENCHMARKS.md).
#
# llvm-profdata must come from rustc's LLVM version: rustup's llvm-tools component, or
# Debian's llvm-<major> package. When neither is installed the script tries to install
# one (rustup, then apt-get); when it cannot, it exits with status 3, or with --or-plain
# makes a plain `cargo build --release <options>` instead and says so. PGO=0 asks for
# that plain build outright. --kind-file F writes the kind of build made ("pgo" or
# "plain") to F, for the caller's records (the bench's results say which they measured).
set -euo pipefail

or_plain=0
kind_file=/dev/null
while (($#)); do
    case $1 in
    --or-plain) or_plain=1 ;;
    --kind-file) kind_file=$(realpath -m "${2:?--kind-file needs a file}") && shift ;;
    *) break ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

say() { printf '\033[1m[pgo]\033[0m %s\n' "$*" >&2; }

# plain <why>: the release build without a profile, when PGO cannot be or is not wanted.
plain() {
    say "$1: a plain release build"
    cargo build --release --quiet "${cargo_args[@]}"
    echo plain >"$kind_file"
    exit 0
}
# unavailable <why>: no PGO here; a plain build with --or-plain, else status 3.
unavailable() {
    ((or_plain)) && plain "$1"
    say "$1"
    exit 3
}
cargo_args=("$@")
[[ ${PGO:-1} == 0 ]] && plain "PGO=0"

host=$(rustc -vV | sed -n 's/^host: //p')
major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $major ]] || unavailable "cannot read rustc's LLVM version"

# llvm-profdata of rustc's LLVM major version (the profile format follows LLVM).
find_profdata() {
    local c path version
    for c in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
        "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata" llvm-profdata; do
        path=$(command -v "$c" 2>/dev/null) || continue
        version=$("$path" --version 2>/dev/null) || continue
        if [[ $version == *"LLVM version $major."* ]]; then
            echo "$path"
            return 0
        fi
    done
    return 1
}
if ! PROFDATA=$(find_profdata); then
    say "no llvm-profdata for LLVM $major: trying rustup's llvm-tools, then Debian's llvm-$major"
    rustup component add llvm-tools >/dev/null 2>&1 ||
        { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "llvm-$major" >/dev/null 2>&1; } || true
    PROFDATA=$(find_profdata) ||
        unavailable "no llvm-profdata for LLVM $major (install rustup's llvm-tools or llvm-$major)"
fi

# Where cargo puts the binary for these options.
target=""
prev=""
for a in "$@"; do
    [[ $prev == --target ]] && target=$a
    [[ $a == --target=* ]] && target=${a#--target=}
    prev=$a
done
sub=${target:+$target/}release

work=$CARGO_TARGET_DIR/pgo
profiles=$work/profiles
say "1/4 instrumented build ($*)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" \
    cargo build --release --quiet --target-dir "$work/instrumented" "$@"
# Build scripts ran instrumented too: only the proxy's own runs count.
rm -rf "$profiles"
mkdir -p "$profiles"

say "2/4 training (harness train)"
cargo bench --no-run --bench harness --quiet 2>/dev/null || cargo bench --no-run --bench harness
HARNESS=$(cargo bench --no-run --bench harness --message-format=json 2>/dev/null |
    grep '"kind":\["bench"\]' | grep '"name":"harness"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x $HARNESS ]] || { say "cannot find the harness executable"; exit 1; }
instrumented=$work/instrumented/$sub/api-key-rotator
"$HARNESS" train --bin "$instrumented" --profiles "$profiles" --n "${PGO_TRAIN_N:-20000}"
if [[ -n ${PGO_TRAIN_ENV:-} ]]; then
    "$HARNESS" train --bin "$instrumented" --profiles "$profiles" --n "${PGO_TRAIN_N:-20000}" \
        --env "$PGO_TRAIN_ENV"
fi
ls "$profiles"/*.profraw >/dev/null 2>&1 || { say "the training wrote no profile"; exit 1; }

say "3/4 merging $(ls "$profiles" | wc -l) profiles ($PROFDATA)"
"$PROFDATA" merge -o "$work/merged.profdata" "$profiles"/*.profraw
# Named by its content: cargo rebuilds what RUSTFLAGS changed for, not what a file did.
merged=$work/merged-$(sha256sum "$work/merged.profdata" | cut -c1-16).profdata
find "$work" -maxdepth 1 -name 'merged-*.profdata' ! -path "$merged" -delete
mv "$work/merged.profdata" "$merged"

say "4/4 optimised build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$merged" \
    cargo build --release --quiet "$@"
echo pgo >"$kind_file"
say "built $CARGO_TARGET_DIR/$sub/api-key-rotator with PGO"
