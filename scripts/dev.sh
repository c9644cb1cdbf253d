#!/usr/bin/env bash
# Quick start: set-up, then `sigild dev` on the embedded default (SoftHSM2 token, SQLite store,
# development operator CA, a swtpm as the demo builder's TPM, all under .sigil-dev/), and a short demo:
# create a key, sign a file, verify the signature with openssl; then the demo builder proves its TPM
# with sigil-agent, gets a builder identity and signs with it. The daemon keeps serving until Ctrl-C (or exits after the
# demo with --exit).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
DIR="${SIGIL_DEV_DIR:-$SIGIL_ROOT/.sigil-dev}"
# sigild dev refuses a directory another daemon serves before it touches anything there (address file, config,
# log: it opens its log file only then), so nothing here removes or writes a file in "$DIR" before it has started;
# only an address file newer than this start counts.
stamp="$(mktemp)"
node bin/sigild.js dev --data-dir "$DIR" --listen "${SIGIL_LISTEN:-127.0.0.1:0}" --log-file "$DIR/sigild.log" &
pid=$!
agent=""
trap '[ -n "$agent" ] && kill $agent 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$stamp"' EXIT
started() { [ -s "$DIR/sigild.addr" ] && [ "$DIR/sigild.addr" -nt "$stamp" ]; }
for _ in $(seq 1 300); do
  started && break
  kill -0 $pid 2>/dev/null || { echo "sigild dev did not start: see its message above (and $DIR/sigild.log if it got that far)" >&2; exit 1; }
  sleep 0.1
done
started || { echo "sigild did not start within 30 s; see $DIR/sigild.log" >&2; exit 1; }

export SIGIL_ADDR="$(cat "$DIR/sigild.addr")" SIGIL_CACERT="$DIR/client/ca.pem" \
  SIGIL_CLIENT_CERT="$DIR/client/admin.pem" SIGIL_CLIENT_KEY="$DIR/client/admin-key.pem"
ctl() { echo "\$ sigilctl $*" >&2; node bin/sigilctl.js "$@"; }

echo "sigild is serving on $SIGIL_ADDR (log: $DIR/sigild.log)"
ctl key show demo/readme >/dev/null 2>&1 || ctl key create demo/readme --alg ECDSA_P256_SHA256
ctl key pubkey demo/readme --out "$DIR/demo-pub.pem"
ctl sign --key demo/readme --file README.md --out "$DIR/README.md.sig"
echo "\$ openssl dgst -sha256 -verify $DIR/demo-pub.pem -signature $DIR/README.md.sig README.md" >&2
openssl dgst -sha256 -verify "$DIR/demo-pub.pem" -signature "$DIR/README.md.sig" README.md

# The demo builder: TPM attestation with swtpm, then a signature with the short-lived builder identity.
TPM="$(cat "$DIR/tpm.spec")"
SOCK="$DIR/agent.sock"
ctl key show dev/provenance >/dev/null 2>&1 || ctl key create dev/provenance --alg ECDSA_P256_SHA256 >/dev/null
echo "\$ sigil-agent enroll --tpm $TPM --policy dev --claim repository=demo/readme --socket $SOCK &" >&2
rm -f "$SOCK"
node bin/sigil-agent.js enroll --tpm "$TPM" --policy dev --claim repository=demo/readme --socket "$SOCK" 2>>"$DIR/agent.log" &
agent=$!
for _ in $(seq 1 300); do
  [ -S "$SOCK" ] && break
  kill -0 $agent 2>/dev/null || { echo "sigil-agent failed to enroll; its log:" >&2; tail -n 5 "$DIR/agent.log" >&2; exit 1; }
  sleep 0.1
done
node bin/sigil-agent.js status --socket "$SOCK"
echo "\$ sigil-agent sign --key dev/provenance --file README.md --out $DIR/README.md.builder.sig" >&2
node bin/sigil-agent.js sign --key dev/provenance --file README.md --out "$DIR/README.md.builder.sig" --socket "$SOCK"
ctl key pubkey dev/provenance --out "$DIR/dev-pub.pem" >/dev/null
openssl dgst -sha256 -verify "$DIR/dev-pub.pem" -signature "$DIR/README.md.builder.sig" README.md

if [ "${1:-}" = "--exit" ]; then exit 0; fi
cat <<MSG

sigild keeps serving until you press Ctrl-C. In another shell:
  export SIGIL_ADDR=$SIGIL_ADDR SIGIL_CACERT=$SIGIL_CACERT SIGIL_CLIENT_CERT=$SIGIL_CLIENT_CERT SIGIL_CLIENT_KEY=$SIGIL_CLIENT_KEY
  npx sigilctl key list
  npx sigil-agent sign --socket $SOCK --key dev/provenance --file FILE --out FILE.sig
MSG
wait $pid
