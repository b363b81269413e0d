#!/usr/bin/env bash
# The test command: set up .venv and run the whole suite (unit tests first, then real-Ray integration tests).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash jobs/setup.sh || exit 1
# Tests run offline: the GPT-2 BPE ranks and tiny Shakespeare come from ../shared/data when present.
shared="$(cd "$root/../shared/data" 2>/dev/null && pwd)"
[ -n "$shared" ] && [ -d "$shared/tiktoken_cache" ] && export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$shared/tiktoken_cache}"
[ -n "$shared" ] && [ -f "$shared/tinyshakespeare/input.txt" ] && export SHAKESPEARE_INPUT="${SHAKESPEARE_INPUT:-$shared/tinyshakespeare/input.txt}"
export RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest "${@:-tests}" -p no:cacheprovider --durations=25  # the slowest tests, to keep the suite in budget
rc=$?
# pytest exits 5 when it collected no tests: that is a broken suite, say so rather than pass silently
[ "$rc" -eq 5 ] && echo "no tests were collected" >&2
exit "$rc"
