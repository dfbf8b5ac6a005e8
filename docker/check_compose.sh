#!/usr/bin/env bash
# Validate every compose file of docker/ with `docker-compose config -q`: compose.yml alone, with
# each overlay, with all of them, and with overlays from docker/scale.sh (4 SuperNodes, plain and
# --tls --gpu). `config` parses, merges and checks the files against the Compose schema; it needs
# no Docker engine and touches no container.
#
#   docker/check_compose.sh            (CI: .github workflow or `make compose-check`)
#
# If docker-compose is missing it installs Debian's `docker-compose` package (apt-get update +
# apt-get install -y --no-install-recommends docker-compose; as root, or through `sudo -n` when
# that works without a password). COMPOSE="docker compose" selects Compose v2 instead.
# Exit status: 0 all valid, 1 a file is invalid, 3 no docker-compose and it cannot be installed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here" || exit 1

install_compose() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            echo "check_compose: docker-compose missing, and installing it needs root or passwordless sudo" >&2
            return 1
        fi
    fi
    command -v apt-get >/dev/null || { echo "check_compose: docker-compose missing and no apt-get" >&2; return 1; }
    echo "check_compose: installing Debian's docker-compose: $sudo apt-get install docker-compose" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >&2
}

if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose <<<"$COMPOSE"
else
    if ! command -v docker-compose >/dev/null; then
        install_compose || exit 3
        command -v docker-compose >/dev/null || { echo "check_compose: docker-compose still missing" >&2; exit 3; }
    fi
    compose=(docker-compose)
fi
echo "check_compose: $("${compose[@]}" version 2>/dev/null | head -n 1)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash "$here/scale.sh" 4 -o "$tmp/scale4.yml" 2>/dev/null || { echo "check_compose: scale.sh failed" >&2; exit 1; }
bash "$here/scale.sh" 4 --tls --gpu -o "$tmp/scale4-tls-gpu.yml" 2>/dev/null || { echo "check_compose: scale.sh failed" >&2; exit 1; }

sets=(
    "compose.yml"
    "compose.yml with-tls.yml"
    "compose.yml gpu.yml"
    "compose.yml with-tls.yml gpu.yml"
    "compose.yml $tmp/scale4.yml"
    "compose.yml with-tls.yml gpu.yml $tmp/scale4-tls-gpu.yml"
)
status=0
for set in "${sets[@]}"; do
    args=()
    for f in $set; do args+=(-f "$f"); done
    if out="$("${compose[@]}" "${args[@]}" config -q 2>&1)"; then
        echo "ok      ${compose[*]} ${args[*]} config -q"
    else
        echo "INVALID ${compose[*]} ${args[*]} config -q"
        while IFS= read -r line; do echo "        $line"; done <<<"$out"
        status=1
    fi
done
exit "$status"
