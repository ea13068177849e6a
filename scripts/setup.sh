#!/usr/bin/env bash
# Installs everything sesmon needs on a fresh Debian machine (run as root, or with sudo):
# Debian's mosquitto and influxdb servers, then the project and its Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] || ! command -v influxd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends mosquitto influxdb >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
command -v pyenv >/dev/null 2>&1 && pyenv rehash  # put the new `sesmon` command on PATH under pyenv
echo "setup done: $(python3 -c 'import sesmon; print("sesmon", sesmon.__version__)'), $(/usr/sbin/mosquitto -h 2>/dev/null | head -1)"
