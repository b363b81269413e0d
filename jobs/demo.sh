#!/usr/bin/env bash
# The quick-start demo: set up, prepare tiny Shakespeare (char level), train a small GPT with 2 Ray Train
# workers on a local Ray cluster, then sample from it. Offline: pass --input=PATH or set SHAKESPEARE_INPUT.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash jobs/setup.sh
source .venv/bin/activate

input="${SHAKESPEARE_INPUT:-}"
for arg in "$@"; do
  case "$arg" in --input=*) input="${arg#--input=}" ;; esac
done
input_flag=()
[ -n "$input" ] && input_flag=("--input=$input")

export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="${RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:-0.5}"
nanogpt-ray prepare shakespeare_char "${input_flag[@]}"
nanogpt-ray train configs/train_shakespeare_char_cpu.py --num_workers=2 --out_dir=out-demo
nanogpt-ray sample --out_dir=out-demo --num_samples=2 --max_new_tokens=300
