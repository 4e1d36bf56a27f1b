#!/usr/bin/env bash
# Installs the official Segment SDKs used by the compatibility tests
# (crates/switchyard/tests/sdk.rs), locally under tests/sdk/:
#   .venv/          Python venv with segment-analytics-python and
#                   openapi-spec-validator (PyPI)
#   node_modules/   @segment/analytics-node and @segment/analytics-next
#                   (analytics.js; npm, pinned by package-lock.json)
# and Debian's Chromium (apt-get, as root) for the analytics.js browser test
# (crates/switchyard/tests/browser.rs).
# Idempotent: a second run with everything in place does nothing but check.
set -euo pipefail
cd "$(dirname "$0")"

PY_SDK="segment-analytics-python==2.4.0"
# Validates the OpenAPI document in crates/switchyard/tests/management.rs.
PY_OPENAPI="openapi-spec-validator==0.9.0"

# --- Python -----------------------------------------------------------------
# A venv without pip (e.g. left by a failed attempt) is made again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    # Debian ships venv/ensurepip separately (python3-venv).
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "tests/sdk/install.sh: installing python3-venv (apt-get)"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv .venv
  fi
fi
if ! .venv/bin/python - "$PY_SDK" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = sys.argv[1].split("==")[1]
sys.exit(0 if version("segment-analytics-python") == want else 1)
EOF
then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input "$PY_SDK"
fi
.venv/bin/python -c "import segment.analytics" \
  || { echo "tests/sdk/install.sh: segment-analytics-python is not importable" >&2; exit 1; }
if ! .venv/bin/python -c "import openapi_spec_validator" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input "$PY_OPENAPI"
fi

# --- Node.js ----------------------------------------------------------------
if [ ! -f node_modules/@segment/analytics-node/package.json ] \
  || [ ! -f node_modules/@segment/analytics-next/dist/umd/index.js ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ] \
  || [ package.json -nt node_modules/.package-lock.json ]; then
  if [ -f package-lock.json ]; then
    npm ci --silent --no-audit --no-fund
  else
    npm install --silent --no-audit --no-fund
  fi
fi
node -e "require.resolve('@segment/analytics-node')" \
  || { echo "tests/sdk/install.sh: @segment/analytics-node is not installed" >&2; exit 1; }
[ -f node_modules/@segment/analytics-next/dist/umd/index.js ] \
  || { echo "tests/sdk/install.sh: @segment/analytics-next is not installed" >&2; exit 1; }

# --- Chromium (analytics.js runs in a real browser) ---------------------------
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tests/sdk/install.sh: installing chromium (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "tests/sdk/install.sh: chromium is missing; install Debian's chromium package (the browser test needs it)" >&2
    exit 1
  fi
fi

echo "tests/sdk/install.sh: SDKs ready ($PY_SDK, $PY_OPENAPI, @segment/analytics-node@$(node -p "require('@segment/analytics-node/package.json').version"), @segment/analytics-next@$(node -p "require('@segment/analytics-next/package.json').version"), $(chromium --version 2>/dev/null | head -1))"
