#!/usr/bin/env bash
# Submit the participant array and the dependent group job for one dataset.
#
#   examples/slurm/submit.sh BIDS_DIR OUTPUT_DIR [--participant "opts"] [--group "opts"] [--apptainer IMAGE.sif]
#
# Prints the two job ids ("ARRAY_ID GROUP_ID"). The array has one task per row of participants.tsv;
# per-task logs go to OUTPUT_DIR/logs/slurm/. --apptainer runs the container image instead of the
# qsm-bids command on PATH. Extra sbatch options (partition, account) go in SBATCH_* environment
# variables, e.g. SBATCH_PARTITION=short.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIDS_DIR=$(cd "$1" && pwd)
OUTPUT_DIR=$2
shift 2
participant_opts="" group_opts="" image=""
while [ $# -gt 0 ]; do
    case "$1" in
        --participant) participant_opts=$2; shift 2 ;;
        --group) group_opts=$2; shift 2 ;;
        --apptainer) image=$2; shift 2 ;;
        *) echo "submit.sh: unknown option $1" >&2; exit 64 ;;
    esac
done
mkdir -p "$OUTPUT_DIR/logs/slurm"
OUTPUT_DIR=$(cd "$OUTPUT_DIR" && pwd)
n=$(( $(grep -c . "$BIDS_DIR/participants.tsv") - 1 ))
if [ "$n" -lt 1 ]; then echo "submit.sh: $BIDS_DIR/participants.tsv lists no participants" >&2; exit 66; fi
array_script=$here/participant_array.sbatch
group_script=$here/group.sbatch
if [ -n "$image" ]; then
    # sbatch passes the environment on: both scripts then run the image with Apptainer
    QSM_BIDS_SIF=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")
    export QSM_BIDS_SIF
fi
# shellcheck disable=SC2086 # the option strings are split into words on purpose
array_id=$(sbatch --parsable --array=1-"$n" --output="$OUTPUT_DIR/logs/slurm/participant_%A_%a.log" \
    "$array_script" "$BIDS_DIR" "$OUTPUT_DIR" $participant_opts)
array_id=${array_id%%;*}
# shellcheck disable=SC2086
group_id=$(sbatch --parsable --dependency=afterok:"$array_id" --output="$OUTPUT_DIR/logs/slurm/group_%j.log" \
    "$group_script" "$BIDS_DIR" "$OUTPUT_DIR" $group_opts)
echo "$array_id ${group_id%%;*}"
