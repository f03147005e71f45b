#!/usr/bin/env bash
# SDK conformance suite: the official OpenAI, Anthropic and Google GenAI Python packages
# (plus requests and curl) against the release binary and a fake upstream.
#
#   tests/sdk/run.sh [pytest args...]
#
# ROTATOR_BIN overrides the binary (default: ${CARGO_TARGET_DIR:-target}/release/
# api-key-rotator, built by `make test-sdk`). The virtualenv lives in tests/sdk/.venv and is refreshed from
# requirements.txt on every run (a no-op when nothing changed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

target="${CARGO_TARGET_DIR:-target}"
[[ "$target" = /* ]] || target="$repo/$target"
bin="${ROTATOR_BIN:-$target/release/api-key-rotator}"
if [[ ! -x "$bin" ]]; then
  echo "tests/sdk/run.sh: rotator binary not found or not executable: $bin" >&2
  echo "  build it with 'cargo build --release' (or 'make test-sdk'), or set ROTATOR_BIN" >&2
  exit 1
fi
export ROTATOR_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

command -v curl >/dev/null || { echo "tests/sdk/run.sh: curl is required" >&2; exit 1; }

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "tests/sdk/run.sh: Python 3.11 or newer is required (google-genai), found $(python3 -V 2>&1)" >&2
  exit 1
}

venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" || {
    echo "tests/sdk/run.sh: 'python3 -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$venv/bin/python" -m pip install -q -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# Keep real credentials and SDK base URLs from the caller's environment out of the suite.
unset OPENAI_API_KEY OPENAI_BASE_URL ANTHROPIC_API_KEY ANTHROPIC_BASE_URL \
      GEMINI_API_KEY GOOGLE_API_KEY GOOGLE_GENAI_USE_VERTEXAI HTTP_PROXY HTTPS_PROXY \
      http_proxy https_proxy ALL_PROXY all_proxy
export NO_PROXY="127.0.0.1,localhost" PYTHONDONTWRITEBYTECODE=1

exec "$venv/bin/python" -m pytest -q "$here" "$@"
