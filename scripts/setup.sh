#!/usr/bin/env bash
# Installs everything the project needs on a bare Debian machine; cheap to re-run (it skips what is there).
#   system: the aarch64 cross compiler (aarch64 builds) and qemu-user (running them under emulation)
#   python: a virtual environment in .venv with the project, its test tools and the Ray Serve extra
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt+=(g++-aarch64-linux-gnu gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v g++ >/dev/null || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
fi
# Reinstall only when the dependency list changed.
stamp=.venv/.neurosurgeon-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv" >&2
  .venv/bin/pip install -q -e ".[dev,ray]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import tvm, onnx, onnxruntime, sklearn, networkx, jinja2" 
  touch "$stamp"
fi
