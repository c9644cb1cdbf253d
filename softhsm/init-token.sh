#!/usr/bin/env bash
# Creates a SoftHSM2 token for sigil development: softhsm/init-token.sh DIR LABEL
# Writes DIR/softhsm2.conf, DIR/tokens/, and random PINs in DIR/user.pin and DIR/so.pin (mode 0600).
# Reuses the token when DIR already holds one with that label. For development and tests only: the
# PINs pass on softhsm2-util's command line, visible in `ps` for a moment.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 DIR LABEL" >&2
  exit 2
fi
dir=$(realpath -m "$1")
label=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
  /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/softhsm/libsofthsm2.so \
  /usr/lib64/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [[ -e $m ]]; then module=$m; break; fi
done
if [[ -z $module ]]; then
  echo "softhsm2 is not installed: no libsofthsm2.so found" >&2
  exit 1
fi
command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found" >&2; exit 1; }

umask 077
mkdir -p "$dir/tokens"
chmod 700 "$dir"
conf=$dir/softhsm2.conf
export SOFTHSM2_CONF=$conf

if [[ -f $conf && -f $dir/user.pin && -f $dir/so.pin ]] &&
  softhsm2-util --show-slots | sed -n 's/^ *Label: *//p' | sed 's/ *$//' | grep -qxF -- "$label"; then
  echo "reusing token \"$label\" in $dir" >&2
else
  sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.template" >"$conf"
  [[ -f $dir/user.pin ]] || od -An -tx1 -N12 /dev/urandom | tr -d ' \n' >"$dir/user.pin"
  [[ -f $dir/so.pin ]] || od -An -tx1 -N12 /dev/urandom | tr -d ' \n' >"$dir/so.pin"
  softhsm2-util --init-token --free --label "$label" \
    --so-pin "$(cat "$dir/so.pin")" --pin "$(cat "$dir/user.pin")" >/dev/null
  echo "created token \"$label\" in $dir" >&2
fi

cat <<YAML
# pkcs11 backend config for this token
type: pkcs11
module: $module
token: $label
pinFile: $dir/user.pin
softhsmConf: $conf
YAML
