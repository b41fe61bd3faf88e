#!/usr/bin/env bash
# Installs promtool (Debian's prometheus package: about 20 MB to download, 96 MB installed),
# which tests/test_metrics.py runs on a real scrape (`promtool check metrics`); without it
# that test is skipped and says so.
#
#   tests/setup_promtool.sh
#
# Idempotent: apt runs only when promtool is missing. It starts no service: the package's
# own Prometheus server is stopped if its postinst started it (the tests need only promtool).
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    promtool --version | head -n 1
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${SUDO[@]}" systemctl stop prometheus || true
elif [ -x /etc/init.d/prometheus ]; then
    "${SUDO[@]}" service prometheus stop >/dev/null 2>&1 || true
fi
promtool --version | head -n 1
