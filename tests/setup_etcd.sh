#!/usr/bin/env bash
# Installs etcd (Debian's etcd-server package), which the cluster tests run as a real
# 3-member cluster on loopback (tests/test_etcd_*.py; zmesh.testing.EtcdCluster starts it); without
# it those tests are skipped and say so.
#
#   tests/setup_etcd.sh
#
# Idempotent: apt runs only when etcd is missing. It starts no service: the package's own
# daemon is stopped if its postinst started it (it would hold the default ports).
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
    etcd --version | head -n 1
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    "${SUDO[@]}" systemctl stop etcd || true
fi
"${SUDO[@]}" service etcd stop >/dev/null 2>&1 || true
etcd --version | head -n 1
