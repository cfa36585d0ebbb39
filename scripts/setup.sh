#!/usr/bin/env bash
# Prepare a fresh machine for edgevla: Debian packages (when root) and a venv with the pinned packages.
# Used by scripts/demo.sh and scripts/test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Debian packages: a C compiler (C header tests), Mesa EGL for MuJoCo's GPU-less offscreen rendering,
# the aarch64 and armv7 cross compilers and qemu-user (arm64 targets and the ARM kernels run under qemu),
# OpenSSH (the flash tests start a real sshd on loopback), node (wasm32 kernels run in node as well),
# oneDNN (x86_64 host bundles run their fp32 MatMul/Conv2d in it: headers to build, libdnnl2 to run).
DEB_PACKAGES=(gcc libc6-dev libegl1 libegl-mesa0 libopengl0 libgl1-mesa-dri g++-aarch64-linux-gnu qemu-user
              gcc-arm-linux-gnueabihf openssh-client openssh-server nodejs)
[[ $(uname -m) == x86_64 ]] && DEB_PACKAGES+=(libdnnl-dev)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[setup] apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "[setup] missing Debian packages: ${missing[*]}" >&2
        echo "[setup] run as root, or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    echo "[setup] edgevla needs Python 3.11 (torch 2.13 CPU and TVM 0.27 wheels); found $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.edgevla-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "[setup] pip install -e .[dev,test] (torch 2.13.0 CPU, apache-tvm 0.27.0.post1, onnxruntime, mujoco, ...)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev,test]"
    touch "$stamp"
fi

# An aarch64 Python with the TVM runtime for verifying arm64 bundles under qemu (built once, cached).
.venv/bin/python -m edgevla.targets.emulate.arm64_python
