#!/usr/bin/env bash
# System packages the end-to-end tests of the served setup need, from Debian:
# - chromium + chromium-driver: the UI test (tests/test_served_ui.py) drives /usr/bin/chromium
#   with Playwright (a test tool's own browser download cannot work on a closed network);
# - postgresql: docker-compose's store, run as a plain process (tests/test_compose_services.py).
# Run by `make test`; does nothing when they are installed.
set -euo pipefail
missing=()
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || missing+=(chromium chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing+=(postgresql)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "installing ${missing[*]} (Debian packages)"
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; }
