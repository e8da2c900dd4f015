#!/usr/bin/env bash
# The README's main command (`make demo`): a small phantom cohort through the BIDS-App.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=${DEMO_DIR:-demo}
N=${DEMO_SUBJECTS:-2}
export NIPYPE_NO_ET=1 TEMPLATEFLOW_AUTOUPDATE=0
rm -rf "$DEMO"
echo "== 1/3 phantom cohort: $N subjects with ground truth -> $DEMO/bids"
time "$BIN/gentract-phantom" "$DEMO/bids" --n-subjects "$N" --seed 0
echo "== 2/3 participant level -> $DEMO/out"
time "$BIN/gentract" "$DEMO/bids" "$DEMO/out" participant -w "$DEMO/work" --random-seed 0
echo "== 3/3 group level"
"$BIN/gentract" "$DEMO/bids" "$DEMO/out" group -w "$DEMO/work"
echo
echo "Outputs:"
find "$DEMO/out" -type f | sort
