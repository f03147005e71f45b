#!/usr/bin/env bash
# make fuzz: every fuzz target in fuzz/ for FUZZ_SECONDS each (default 60), starting from
# the seed corpora in fuzz/seeds/. A crash, a failed check or a hang fails the run and
# leaves the input in fuzz/artifacts/<target>/ (make it a test: docs/FUZZING.md).
#
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them. cargo-fuzz itself is installed from crates.io when missing.
#
#   FUZZ_SECONDS=60      seconds per target
#   FUZZ_TARGETS="a b"   only these targets
#   FUZZ_SEED=1          libFuzzer's random seed (default: a new one each run). CI sets
#                        one, so its run repeats one that passed here and fails only on
#                        a change to the code, never on the luck of the draw.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-60}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build
TARGETS=${FUZZ_TARGETS:-$(cargo fuzz list)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rotator-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SEED_ARGS=()
[[ -n ${FUZZ_SEED:-} ]] && SEED_ARGS=(-seed="$FUZZ_SEED")
failed=()
for t in $TARGETS; do
    printf '\n== fuzz %s for %ss\n' "$t" "$SECONDS_EACH"
    mkdir -p "$WORK/$t"
    # New inputs go to the scratch corpus; the committed seeds are only read.
    if ! cargo fuzz run "$t" "$WORK/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${SEED_ARGS[@]}"; then
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "fuzzing found problems in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing: every target ran ${SECONDS_EACH}s without a failure"
