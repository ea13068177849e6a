#!/usr/bin/env bash
# Installs everything sesmon needs on a fresh Debian machine (run as root, or with sudo):
# Debian's mosquitto and influxdb servers, then the project and its Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] || ! command -v influxd >/dev/null 2>&1 \
  || ! command -v chromium >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # chromium: the replay report test; docker-compose (Compose 1.29): `config` checks docker-compose.yml
  $SUDO apt-get install -y -qq --no-install-recommends mosquitto influxdb chromium docker-compose >/dev/null
fi
# grafana-client needs niquests, which needs urllib3-future; that package's wheel installs a .pth
# hook replacing the real urllib3 (pinned, used by the webhooks) at every interpreter start. These
# two variables install it beside urllib3 instead (niquests then imports it as urllib3_future).
URLLIB3_NO_OVERRIDE=1 PIP_NO_BINARY=urllib3-future \
  python3 -m pip install -q --disable-pip-version-check -e ".[test]"
python3 -c 'import urllib3, sys; sys.exit(0 if urllib3.__version__.startswith("2.") and int(urllib3.__version__.split(".")[1]) < 20 else "urllib3 was replaced by urllib3-future: " + urllib3.__version__)'
command -v pyenv >/dev/null 2>&1 && pyenv rehash  # put the new `sesmon` command on PATH under pyenv
echo "setup done: $(python3 -c 'import sesmon; print("sesmon", sesmon.__version__)'), $(/usr/sbin/mosquitto -h 2>/dev/null | head -1)"
