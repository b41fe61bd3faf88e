#!/usr/bin/env bash
# Installs the benchmark's peers: Debian's etcd-server, redis-server and nats-server, and
# their Python clients (redis-py without hiredis, etcd3gw, nats-py) into a venv.
#
#   bench/setup_peers.sh [VENV]        (VENV defaults to .venv; created if missing)
#
# Idempotent: apt runs only when a package is missing, pip only installs what is absent.
# It starts no service. The harness (python -m bench) starts every server itself on
# 127.0.0.1, on free ports, with a temp data dir, and stops it by PID; so if a package's
# postinst started a system daemon, it is stopped here, because it would take CPU from the
# measurements and hold the default ports.
set -euo pipefail

VENV="${1:-.venv}"
PACKAGES=(etcd-server redis-server nats-server)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"
    # postinst may have started the daemons (invoke-rc.d): stop them, ignoring errors
    # (no init system in a container, service not running, ...)
    for svc in redis-server etcd nats-server; do
        "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
    done
else
    echo "Debian packages already installed: ${PACKAGES[*]}"
fi
# also on a re-run: a daemon enabled at boot would still compete for CPU and default ports
for svc in redis-server etcd nats-server; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        "${SUDO[@]}" systemctl stop "$svc" || true
    elif [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
        "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
    fi
done

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv $VENV"
    python3 -m venv "$VENV"
fi
# plain redis (no [hiredis] extra): the harness measures the pure-Python client, as PEERS.md says
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check redis etcd3gw nats-py

# MCP Agent Mail, the agent-native peer (PEERS.md): its own venv, since it pins an MCP SDK 1.x
# and zmesh needs 2.x. It needs Python >= 3.11; without it the harness skips its rows and says why.
AGENTMAIL_VENV="$(dirname "$0")/.venv-agentmail"
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    if [ ! -x "$AGENTMAIL_VENV/bin/python" ]; then
        python3 -m venv "$AGENTMAIL_VENV"
    fi
    "$AGENTMAIL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check mcp-agent-mail \
        || echo "mcp-agent-mail did not install; the benchmark will skip it"
else
    echo "python3 is older than 3.11: mcp-agent-mail cannot be installed; the benchmark will skip it"
fi

echo "--- versions"
redis-server --version
etcd --version | head -n 1
{ command -v nats-server >/dev/null && nats-server --version; } || /usr/sbin/nats-server --version
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util

for dist in ("redis", "etcd3gw", "nats-py"):
    print(f"{dist} {md.version(dist)}")
print("hiredis:", "installed (redis-py will use it)" if importlib.util.find_spec("hiredis") else "not installed")
EOF
