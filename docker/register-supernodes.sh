#!/bin/sh
# Register every SuperNode public key (*.pub in $AHM_NODE_KEYS_DIR) with the SuperLink, for
# CLI-managed SuperNode authentication (flower-superlink --enable-supernode-auth). Run by the
# one-shot `supernode-registrar` service of docker/with-tls.yml; works on a host too:
#
#   AHM_SUPERLINK_CONTROL=127.0.0.1:8000 AHM_CA_CERT=docker/certs/out/ca.crt \
#   AHM_NODE_KEYS_DIR=docker/certs/out/node-auth-pub sh docker/register-supernodes.sh
#
# Waits for the SuperLink's Control API (up to AHM_WAIT_S seconds, default 120), writes a
# throw-away Flower config with one connection, and registers each key; a key that is already
# registered ("Public key already in use") counts as done, so reruns succeed. POSIX sh: the
# flwr images may not have bash.
set -eu

addr="${AHM_SUPERLINK_CONTROL:-superlink:8000}"
ca="${AHM_CA_CERT:-/run/secrets/ca-cert}"
keys="${AHM_NODE_KEYS_DIR:-/app/node-auth-pub}"
wait_s="${AHM_WAIT_S:-120}"

FLWR_HOME="$(mktemp -d)"
export FLWR_HOME
trap 'rm -rf "$FLWR_HOME"' EXIT
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "registrar"

[superlink.registrar]
address = "$addr"
root-certificates = "$ca"
EOF

waited=0
until flwr supernode list registrar >/dev/null 2>&1; do
    if [ "$waited" -ge "$wait_s" ]; then
        echo "registrar: SuperLink Control API at $addr not reachable after ${wait_s}s" >&2
        flwr supernode list registrar >&2 || true
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done

count=0
for key in "$keys"/*.pub; do
    [ -e "$key" ] || { echo "registrar: no *.pub in $keys (run docker/certs/generate.sh)" >&2; exit 1; }
    name="$(basename "$key" .pub)"
    if out="$(flwr supernode register "$key" registrar --name "$name" 2>&1)"; then
        echo "registrar: $name registered"
    else
        case "$out" in
            *"already in use"*) echo "registrar: $name was registered already" ;;
            *) echo "registrar: registering $name failed:" >&2; echo "$out" >&2; exit 1 ;;
        esac
    fi
    count=$((count + 1))
done
echo "registrar: $count SuperNode key(s) registered with $addr"
