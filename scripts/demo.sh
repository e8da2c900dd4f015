#!/usr/bin/env bash
# The README's main command (`make demo`): a small human-anatomy phantom cohort (held-out seed,
# each subject in its own scanner space) through the BIDS-App, with GenTract (the default shipped
# model, gentract_human_phantom: registration to its MNI template, sampling, streamlines mapped
# back) and one baseline (MRtrix3 SD_Stream + SIFT), then the group level. Sizes can be changed
# with DEMO_SUBJECTS and DEMO_STREAMLINES.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=${DEMO_DIR:-demo}
N=${DEMO_SUBJECTS:-2}
S=${DEMO_STREAMLINES:-2000}
export NIPYPE_NO_ET=1 TEMPLATEFLOW_AUTOUPDATE=0
rm -rf "$DEMO"
echo "== 1/3 human-anatomy phantom cohort: $N subjects with ground truth -> $DEMO/bids"
time "$BIN/gentract-phantom" "$DEMO/bids" --anatomy human --n-subjects "$N" --seed 1000
echo "== 2/3 participant level: GenTract and SD_Stream, $S streamlines each -> $DEMO/out"
time "$BIN/gentract" "$DEMO/bids" "$DEMO/out" participant -w "$DEMO/work" --random-seed 0 \
  --tracker gentract sdstream --n-streamlines "$S" --sift-factor 5 --nprocs 2
echo "== 3/3 group level"
"$BIN/gentract" "$DEMO/bids" "$DEMO/out" group -w "$DEMO/work"
echo
echo "Precision (ground truth) per subject and tracker:"
"$BIN/python" - "$DEMO"/out/sub-*/dwi/*_desc-eval_*_metrics.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    m = json.load(open(path))
    name = path.rsplit("/", 1)[-1]
    print(f"  {name}: precision {100 * m['precision']:.1f} %, "
          f"bundles {m['valid_bundles']}/{m['n_bundles']}")
PY
echo
echo "Reports: $(ls "$DEMO"/out/sub-*.html | tr '\n' ' ')"
echo "Group report: $DEMO/out/group.html"
