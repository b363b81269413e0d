#!/usr/bin/env bash
# The quick-start demo: set up, prepare tiny Shakespeare (char level), train a small GPT with 2 Ray Train
# workers on a local Ray cluster, then sample from it. Works offline: the corpus ships with the project
# (data/shakespeare_char/input.txt.gz); --input=PATH or SHAKESPEARE_INPUT picks another copy.
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
# the local cluster the demo starts listens on loopback only: token auth and usage stats would only add
# warnings to the console
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
# DEMO_DIR: where the dataset and the run go (default: the repository, as data/ and out-demo/)
demo_dir="${DEMO_DIR:-$root}"
out_dir="$demo_dir/out-demo"
data_root="$demo_dir/data"
# Ray prints an error-level note from its core worker when Train starts an internal actor; it needs no
# action, so the demo filters it (the exit status is still train's: pipefail)
quiet() { grep --line-buffered -v -E "core_worker\.cc:[0-9]+: Actor with class name: .* has constructor arguments in the object store" || true; }

nanogpt-ray prepare shakespeare_char --data_root="$data_root" "${input_flag[@]}"
nanogpt-ray train configs/train_shakespeare_char_cpu.py --num_workers=2 --out_dir="$out_dir" --data_root="$data_root" 2>&1 | quiet
nanogpt-ray sample --out_dir="$out_dir" --data_root="$data_root" --num_samples=2 --max_new_tokens=300

val_loss="$(python -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); print(f\"{float(c['best_val_loss']):.4f} after {c['iter_num']} iterations\")" "$out_dir/ckpt.pt")"
cat <<SUMMARY

==================================================================== demo done
val loss:    $val_loss
checkpoint:  $out_dir/ckpt.pt
next:
  nanogpt-ray sample --out_dir=$out_dir --start="ROMEO:" --top_k=1 --num_samples=1   # greedy text from your model
  nanogpt-ray tune configs/sweep_shakespeare_char_cpu.py               # 4-trial lr x size sweep (~2 min)
  nanogpt-ray serve --out_dir=$out_dir                                 # an OpenAI-compatible endpoint on :8000
  nanogpt-ray export --out_dir=$out_dir                                # a Hugging Face directory in $out_dir/hf
SUMMARY
