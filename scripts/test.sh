#!/usr/bin/env bash
# The whole test suite: set-up, contract lint, type check, then every test file under test/.
# SIGIL_REQUIRE_HW=1 (as CI sets it) turns "tool missing, skipped" into a failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
echo "== buf lint" >&2
node_modules/.bin/buf lint
echo "== buf breaking (against the released contract snapshot)" >&2
node_modules/.bin/buf breaking --against proto/snapshot/sigil-v1.json
echo "== tsc (type check)" >&2
node_modules/.bin/tsc -p .
echo "== tests" >&2
# Each test file runs in its own process with its own SoftHSM token, temp dir and ports.
node --test --test-concurrency=2 --test-timeout=300000 "test/**/*.test.ts" "$@"
