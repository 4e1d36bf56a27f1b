#!/usr/bin/env bash
# Installs the official Segment SDKs used by the compatibility tests.
set -euo pipefail
cd "$(dirname "$0")"
echo "tests/sdk/install.sh: nothing to install yet"
