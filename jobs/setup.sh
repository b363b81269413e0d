#!/usr/bin/env bash
# Create .venv (once) and install nanogpt-ray into it, with the CPU build of torch where there is no GPU.
# Sourced by jobs/demo.sh and tests/run.sh; safe to run again (it only installs what is missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NANOGPT_RAY_VENV:-$root/.venv}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip=("$venv/bin/python" -m pip install -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    # A plain `torch` would pull several GB of CUDA packages on a machine that cannot use them. The pinned
    # CPU wheel (+cpu, a local version PyPI never has) comes from pip's own sources first (a local wheel folder answers at once); only when
    # they lack it is PyTorch's CPU index asked (unreachable offline, where pip would retry it per package).
    "${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}+cpu" 2>/dev/null ||
      "${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}" --extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
fi

stamp="$venv/.nanogpt-ray-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "${pip[@]}" -e "$root[${NANOGPT_RAY_EXTRAS:-dev}]"
  touch "$stamp"
fi
