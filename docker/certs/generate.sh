#!/usr/bin/env bash
# Generate everything docker/with-tls.yml mounts: a private CA, the SuperLink's TLS certificate,
# one TLS certificate per SuperNode (its Runtime API, which the ClientApp SuperExec dials), one
# ECDSA key pair per SuperNode for SuperNode authentication, and the SuperExec shared secret.
#
# Usage: docker/certs/generate.sh [-n NUM_SUPERNODES] [-o OUT_DIR] [-f]
#   -n  number of SuperNodes (default: $AHM_NUM_SUPERNODES or 2): supernode-0 .. supernode-(n-1)
#   -o  output folder (default: $AHM_CERTS_DIR or docker/certs/out next to this script)
#   -f  throw away what is there and start again (new CA, new keys)
# Environment:
#   AHM_SUPERLINK_SANS  extra subjectAltNames for the SuperLink certificate, comma separated, for
#                       SuperNodes on other machines, e.g. "DNS:link.example.org,IP:10.0.0.5"
#   AHM_CERT_DAYS       validity of the leaf certificates in days (default 365; the CA gets 10x)
#
# Idempotent: a rerun keeps the CA, the keys and the secret, and re-issues a certificate only when
# it is missing, no longer verifies against the CA, expires within 30 days, or its SANs changed.
# Needs openssl and ssh-keygen (Debian: apt-get install openssl openssh-client).
#
# Layout of OUT_DIR (never commit it; docker/.gitignore ignores docker/certs/out):
#   ca.crt ca.key                      the CA (ca.key is never mounted into a container)
#   superlink.crt superlink.key        TLS of the SuperLink (Fleet, Control and Runtime APIs)
#   supernode-N.crt supernode-N.key    TLS of SuperNode N's Runtime API
#   node-auth/supernode-N.key          SuperNode N's authentication private key (OpenSSH format)
#   node-auth-pub/supernode-N.pub      its public key, registered with `flwr supernode register`
#   superexec.secret                   shared secret of SuperLink/SuperNodes and their SuperExecs
# OUT_DIR itself is mode 0700, so other users of this host cannot read it; the files inside are
# 0644 because the Flower images run as uid 49999 and must read the bind-mounted files.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
num="${AHM_NUM_SUPERNODES:-2}"
out="${AHM_CERTS_DIR:-$here/out}"
force=0
days="${AHM_CERT_DAYS:-365}"
extra_sans="${AHM_SUPERLINK_SANS:-}"

while getopts "n:o:fh" opt; do
    case "$opt" in
        n) num="$OPTARG" ;;
        o) out="$OPTARG" ;;
        f) force=1 ;;
        h) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "usage: $0 [-n NUM_SUPERNODES] [-o OUT_DIR] [-f]" >&2; exit 2 ;;
    esac
done

case "$num" in '' | *[!0-9]*) echo "error: -n needs a positive integer, got '$num'" >&2; exit 2 ;; esac
if [ "$num" -lt 1 ]; then echo "error: -n needs at least 1 SuperNode" >&2; exit 2; fi
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install openssl openssh-client)" >&2; exit 1; }
done

if [ "$force" = 1 ] && [ -d "$out" ]; then rm -rf "$out"; fi
umask 077
mkdir -p "$out/node-auth" "$out/node-auth-pub"
chmod 0700 "$out"
cd "$out"

log() { echo "[certs] $*"; }

# --- CA --------------------------------------------------------------------------------------
if [ ! -s ca.key ] || [ ! -s ca.crt ] || ! openssl x509 -checkend 2592000 -noout -in ca.crt >/dev/null; then
    log "new CA"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days "$((days * 10))" -subj "/CN=AHM federation CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.crt
    rm -f ./*.sans # every leaf must be re-issued under the new CA
fi

# issue NAME SANS: TLS server certificate NAME.crt/NAME.key signed by the CA
issue() {
    local name="$1" sans="$2"
    if [ -s "$name.key" ] && [ -s "$name.crt" ] && [ "$(cat "$name.sans" 2>/dev/null)" = "$sans" ] \
        && openssl verify -CAfile ca.crt "$name.crt" >/dev/null 2>&1 \
        && openssl x509 -checkend 2592000 -noout -in "$name.crt" >/dev/null; then
        log "$name.crt is current"
        return
    fi
    log "issuing $name.crt ($sans)"
    [ -s "$name.key" ] || openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$sans" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
    printf '%s' "$sans" >"$name.sans"
}

base_sans="DNS:localhost,IP:127.0.0.1,IP:::1"
link_sans="DNS:superlink,$base_sans"
if [ -n "$extra_sans" ]; then link_sans="$link_sans,$extra_sans"; fi
issue superlink "$link_sans"

for ((i = 0; i < num; i++)); do
    node="supernode-$i"
    issue "$node" "DNS:$node,$base_sans"
    # SuperNode authentication: an ECDSA (NIST P-384) key pair in OpenSSH format, the format
    # flower-supernode --auth-supernode-private-key and flwr supernode register read.
    if [ ! -s "node-auth/$node.key" ] || [ ! -s "node-auth-pub/$node.pub" ]; then
        log "new authentication key pair for $node"
        rm -f "node-auth/$node.key" "node-auth/$node.key.pub"
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "ahm-$node" -f "node-auth/$node.key"
        mv "node-auth/$node.key.pub" "node-auth-pub/$node.pub"
    fi
done

if [ ! -s superexec.secret ]; then
    log "new SuperExec shared secret"
    openssl rand -hex 32 | tr -d '\n' >superexec.secret
fi

# Readable by the containers' uid 49999 (bind mounts keep host modes); the 0700 folder above
# keeps other host users out. The CA key is never mounted and stays 0600.
find . -type d -exec chmod 0755 {} +
chmod 0700 .
find . -type f ! -name ca.key -exec chmod 0644 {} +
chmod 0600 ca.key

for f in superlink.crt supernode-*.crt; do openssl verify -CAfile ca.crt "$f" >/dev/null; done
log "done: $out ($num SuperNodes)"
