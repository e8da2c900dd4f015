#!/usr/bin/env bash
# One participant per Slurm array task (the habit of most labs), e.g. for 2 participants:
#   sbatch --array=1-2 scripts/slurm_participant.sh BIDS_DIR OUTPUT_DIR WORK_ROOT [gentract options]
# Task i runs the i-th participant of BIDS_DIR/participants.tsv with its own work directory
# (WORK_ROOT/sub-<label>) and the task's CPUs; scripts/slurm_cohort.sh adds the group level.
# Set GENTRACT to the command (default: gentract; e.g. "apptainer run gentract.sif").
#SBATCH --job-name=gentract
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --output=gentract-%A_%a.out
set -euo pipefail
BIDS=$1 OUT=$2 WORK=$3
shift 3
label=$(awk -F'\t' 'NR > 1 && $1 != "" {print $1}' "$BIDS/participants.tsv" |
        sed -n "${SLURM_ARRAY_TASK_ID:?run me with sbatch --array}p")
[ -n "$label" ] || { echo "no participant number $SLURM_ARRAY_TASK_ID in $BIDS" >&2; exit 66; }
label=${label#sub-}
mem=$(( ${SLURM_MEM_PER_NODE:-4096} * 9 / 10 ))
# shellcheck disable=SC2086
exec ${GENTRACT:-gentract} "$BIDS" "$OUT" participant --participant-label "$label" \
  -w "$WORK/sub-$label" --nprocs "${SLURM_CPUS_PER_TASK:-1}" --mem "$mem" "$@"
