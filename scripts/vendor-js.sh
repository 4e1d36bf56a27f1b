#!/usr/bin/env bash
# Refreshes the JavaScript libraries embedded in the function runtime, from the
# npm registry (the same packages Segment's runtime pre-installs).
set -euo pipefail
cd "$(dirname "$0")/../crates/functions/js/vendor"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent lodash@4.17.21 xml@1.0.1 >/dev/null && tar xzf lodash-4.17.21.tgz && mv package lodash && tar xzf xml-1.0.1.tgz && mv package xml)
cp "$tmp/lodash/lodash.min.js" lodash.min.js
cp "$tmp/lodash/LICENSE" lodash.LICENSE
cp "$tmp/xml/lib/xml.js" "$tmp/xml/lib/escapeForXML.js" "$tmp/xml/LICENSE" xml/
echo "vendored lodash 4.17.21 and xml 1.0.1"
