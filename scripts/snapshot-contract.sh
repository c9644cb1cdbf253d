#!/usr/bin/env bash
# Refreshes proto/snapshot/sigil-v1.json, the contract `buf breaking` compares against in the test
# command. Run it after a deliberate, compatible change to proto/ (adding fields, RPCs, enum values),
# and commit the snapshot with the change; a breaking change needs a new package version instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
node_modules/.bin/buf breaking --against proto/snapshot/sigil-v1.json
node_modules/.bin/buf build --exclude-source-info -o proto/snapshot/sigil-v1.json
echo "proto/snapshot/sigil-v1.json refreshed"
