#!/usr/bin/env bash
# A cohort on Slurm: one array task per participant, then the group level once all succeeded.
#   scripts/slurm_cohort.sh BIDS_DIR OUTPUT_DIR WORK_ROOT [gentract participant options]
# Prints the two job ids (array, group). Extra sbatch options: SBATCH_ARGS="-p short -t 2:00:00".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIDS=$(realpath "$1") OUT=$(realpath -m "$2") WORK=$(realpath -m "$3")
shift 3
n=$(awk -F'\t' 'NR > 1 && $1 != ""' "$BIDS/participants.tsv" | wc -l)
[ "$n" -gt 0 ] || { echo "no participants in $BIDS/participants.tsv" >&2; exit 66; }
mkdir -p "$WORK"
# shellcheck disable=SC2086
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array="1-$n" --chdir "$WORK" \
        "$here/slurm_participant.sh" "$BIDS" "$OUT" "$WORK" "$@")
# shellcheck disable=SC2086
group=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:$array" --job-name=gentract-group \
        --chdir "$WORK" --output=gentract-group-%j.out \
        --wrap="${GENTRACT:-gentract} $BIDS $OUT group -w $WORK/group")
echo "$array $group"
