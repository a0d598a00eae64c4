#!/usr/bin/env bash
# Runs @fastify/websocket's own test suite twice: as published (baseline), then with
# fastify-secure-ws registered by with-secure-ws.cjs. Fetches nothing.
#
# Usage: test/compat/run.sh <suite-dir>
#   <suite-dir>: a copy of @fastify/websocket's tree (index.js, test/) of the installed version.
#   SECURE_WS_ENTRY: use this build of the plugin instead of this repo's dist/index.js.
# Exit status: 0 when both modes pass the same number of tests, 1 otherwise, 2 on misuse.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -f "$1/index.js" ] || [ ! -d "$1/test" ]; then
  echo "usage: $0 <dir holding @fastify/websocket's index.js and test/>" >&2
  exit 2
fi
suite=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
preload="$here/with-secure-ws.cjs"

if [ -z "${SECURE_WS_ENTRY:-}" ]; then
  entry="$repo/dist/index.js"
  # A dist/ older than lib/ would test yesterday's plugin.
  if [ ! -f "$entry" ] || [ -n "$(find "$repo/lib" -newer "$entry" -print -quit)" ]; then
    echo "building $repo/dist (missing or older than lib/)" >&2
    (cd "$repo" && npm run --silent build)
  fi
  export SECURE_WS_ENTRY="$entry"
fi

# The suite resolves its dependencies from its own node_modules: lend it this repo's, with the
# fastify-plugin major that @fastify/websocket itself ships with.
if [ ! -e "$suite/node_modules" ]; then
  mkdir "$suite/node_modules"
  for dep in "$repo"/node_modules/* "$repo"/node_modules/.bin; do
    ln -s "$dep" "$suite/node_modules/$(basename "$dep")"
  done
  nested="$repo/node_modules/@fastify/websocket/node_modules/fastify-plugin"
  if [ -d "$nested" ]; then ln -sfn "$nested" "$suite/node_modules/fastify-plugin"; fi
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/fws-compat.XXXXXX")
export FWS_SUITE_DIR="$suite"

# node --test runs each file in a child process; NODE_OPTIONS reaches every child.
run_suite () { # <log> <with-preload: yes|no> <node --test args...>
  local log=$1 with=$2; shift 2
  local opts=${NODE_OPTIONS:-}
  if [ "$with" = yes ]; then opts="$opts --require $preload"; fi
  (cd "$suite" && NODE_OPTIONS="$opts" timeout 300 node --test --test-timeout=20000 "$@") < /dev/null > "$log" 2>&1 || true
}
count () { sed -n "s/^# $1 //p" "$2" | tail -1; }
summary () { echo "pass $(count pass "$1")/$(count tests "$1") (fail $(count fail "$1"), cancelled $(count cancelled "$1"))"; }

run_suite "$logs/baseline.tap" no test/
run_suite "$logs/with-secure-ws.tap" yes test/
echo "baseline:               $(summary "$logs/baseline.tap")"
echo "with fastify-secure-ws: $(summary "$logs/with-secure-ws.tap")"

# A test that never settles cancels every later test of its file; rerun each one that did not
# pass on its own, so only the tests that fail by themselves are named.
failed=$(awk '
  /^not ok [0-9]+ - / { name = $0; sub(/^not ok [0-9]+ - /, "", name); sub(/ # .*$/, "", name); next }
  name != "" && /^  location: / { file = $2; gsub(/\047/, "", file); sub(/:[0-9]+:[0-9]+$/, "", file); print file "\t" name; name = "" }
' "$logs/with-secure-ws.tap")
if [ -n "$failed" ]; then
  echo "tests that did not pass with the plugin, each rerun alone:"
  while IFS=$'\t' read -r file name; do
    pattern=$(printf '%s' "$name" | sed 's/[][\.*^$()+?{}|/]/\\&/g')
    log="$logs/alone.$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_' | cut -c1-80).tap"
    run_suite "$log" yes --test-name-pattern="^${pattern}\$" "$file"
    if [ "$(count pass "$log")" = 1 ]; then verdict="passes alone (cancelled by an earlier test)"; else verdict="FAILS alone"; fi
    echo "  - $name ($(basename "$file")): $verdict"
  done <<< "$failed"
fi
echo "logs: $logs"

[ "$(count pass "$logs/baseline.tap")" = "$(count pass "$logs/with-secure-ws.tap")" ]
