#!/usr/bin/env bash
# Set up a fresh machine for ssal: a virtual environment in .venv with PyTorch, ssal and its
# test tools, and Debian's Fashion-MNIST where apt is available. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ -z "${TORCH_SPEC:-}" ]; then
  case "$(uname -m)" in
    aarch64|arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi

stamp="$VENV/.ssal-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check $TORCH_SPEC
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi

# Debian packages, where apt is available: the demo's data, and a browser for the report test.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {  # apt_install PACKAGE: quietly, refreshing the package lists once if needed
  command -v apt-get >/dev/null 2>&1 || return 1
  # wait (up to 5 minutes) for another apt or dpkg that holds the lock, instead of failing
  local apt=($SUDO apt-get -o DPkg::Lock::Timeout=300)
  "${apt[@]}" install -y -qq "$1" >/dev/null 2>&1 ||
    { "${apt[@]}" update -qq >/dev/null 2>&1 && "${apt[@]}" install -y -qq "$1" >/dev/null 2>&1; }
}

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/t10k-labels-idx1-ubyte.gz" ]; then
  if apt_install dataset-fashion-mnist; then
    echo "installed Debian's dataset-fashion-mnist into $fmnist"
  else
    echo "note: could not install dataset-fashion-mnist; put the four Fashion-MNIST" \
         "*-ubyte.gz files in $fmnist or pass --data-dir" >&2
  fi
fi
if [ -z "${SSAL_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if apt_install chromium; then
    echo "installed Debian's chromium (the report's browser test uses it)"
  else
    echo "note: could not install chromium; the report's browser test will be skipped" >&2
  fi
fi
