#!/bin/sh
# Install tuwen from this wheelhouse on a machine without internet: a virtual environment, then pip with
# --no-index, so nothing is fetched. Made by `make wheelhouse`; the wheels fit one Python version
# (python-version, next to this script) on one architecture.
#
#   sh install.sh [VENV]            default VENV: ./tuwen-venv
#   PYTHON=python3.11 sh install.sh /opt/tuwen/.venv
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-./tuwen-venv}
python=${PYTHON:-python3}
wanted=$(cat "$here/python-version")
found=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$found" != "$wanted" ]; then
  echo "这些 wheel 适用于 Python $wanted，而 $python 是 $found：请用 PYTHON=python$wanted 指定解释器" >&2
  echo "these wheels are for Python $wanted but $python is $found: choose one with PYTHON=python$wanted" >&2
  exit 1
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --no-index --find-links "$here/wheels" tuwen
"$venv/bin/tuwen" --version
echo "已安装 / installed: $venv/bin/tuwen (config: $here/config.example.toml)"
