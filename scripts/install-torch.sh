#!/usr/bin/env bash
# Put the right torch into a virtualenv, and switch it when the choice changes.
#
#   scripts/install-torch.sh PYTHON VERSION CHOICE
#
# CHOICE: auto (CPU build unless this machine has an NVIDIA GPU), cpu, cuda (PyPI's default wheel, the
# CUDA build on Linux), keep (leave any torch >= 2.6 that is already there), or an index URL.
# VERSION: e.g. 2.13.0; empty = any torch >= 2.6.
#
# The choice made is recorded in VENV/.torch-choice. Run again with another CHOICE and the old torch is
# uninstalled first (pip would otherwise call a CUDA 2.13.0 "already satisfied" by a CPU 2.13.0).
# The CPU build comes from PyTorch's CPU index; when that index cannot be reached, the default index is
# used instead (and the line saying so is printed).
set -euo pipefail
py=$1
version=${2:-}
choice=${3:-auto}
venv=$(dirname "$(dirname "$py")")
stamp="$venv/.torch-choice"
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

has_nvidia_gpu() {
  [ -e /proc/driver/nvidia/version ] && return 0
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

if [ "$choice" = auto ]; then
  if has_nvidia_gpu; then choice=cuda; else choice=cpu; fi
fi
spec="torch==$version"
[ -n "$version" ] || spec="torch>=2.6"
want="$choice $spec"
have=$(cat "$stamp" 2>/dev/null || true)
installed=$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)

if [ "$choice" = keep ]; then
  if [ -n "$installed" ]; then echo "torch $installed kept (TORCH=keep)"; echo "$want" > "$stamp"; exit 0; fi
  choice=auto; has_nvidia_gpu && choice=cuda || choice=cpu
  want="$choice $spec"
fi
if [ -n "$installed" ] && [ "$have" = "$want" ]; then
  exit 0  # what was asked for is what is there
fi
if [ -n "$installed" ]; then
  echo "torch: switching from '${have:-torch $installed, choice unknown}' to '$want'"
  "$py" -m pip uninstall -q -y torch
fi
pip=("$py" -m pip install -q)
case "$choice" in
  cpu)
    echo "torch: CPU build ($spec; no NVIDIA GPU found; TORCH=cuda make ... for the CUDA build)"
    if ! "${pip[@]}" --retries 1 --timeout 20 --index-url "$cpu_index" "$spec" 2>/tmp/slimpipe-torch-$$.log; then
      echo "torch: the CPU index ($cpu_index) could not be used ($(grep -m1 -iE 'error|could not' /tmp/slimpipe-torch-$$.log || echo 'no reason given')); using the default index"
      "${pip[@]}" "$spec"
    fi
    rm -f /tmp/slimpipe-torch-$$.log ;;
  cuda)
    echo "torch: default (CUDA) build ($spec)"
    "${pip[@]}" "$spec" ;;
  *)
    echo "torch: $spec from $choice"
    "${pip[@]}" --index-url "$choice" "$spec" ;;
esac
echo "$want" > "$stamp"
