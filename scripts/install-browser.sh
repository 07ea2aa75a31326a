#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the UI end-to-end test (tests/test_served_ui.py), which
# Playwright drives at /usr/bin/chromium (a test tool's own browser download cannot work here).
# Run by `make test`; does nothing when both are installed.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver \
  || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }
/usr/bin/chromium --version
