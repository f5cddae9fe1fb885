#!/usr/bin/env bash
# CI on a real SLURM (after `make test` in .ci/run):
#   1. start the single-node cluster (ci/slurm.sh), stop it on exit (only what it started)
#   2. simulate a 2 ALS + 2 control cohort
#   3. reference: the participant level run locally
#   4. the same through examples/slurm/submit.sh: a 4-task job array and the group job with
#      --dependency=afterok; every task and the group job must exit 0 (the scripts' exit-code files and
#      SLURM's own job records); the participant outputs must equal the local run's, registrations
#      included (--n-cpus 1 and one seed make ANTs bitwise reproducible), and the group job's outputs
#      must equal a local group run on the same participant results
#   5. tests/test_slurm.py: exit codes of failing tasks, afterok holding the group job, and the
#      permutations on dask_jobqueue.SLURMCluster (workers are SLURM jobs) equal to one process
#   6. when the group level has the Dask option: the group level with its permutations on a
#      SLURMCluster, FWE maps equal to the local single-process ones
# Prints the time each part took and the total it adds to CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
SCRATCH=${QSM_SLURM_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/qsm-bids-slurm-check.XXXXXX")}
export QSM_SLURM_DIR=$SCRATCH/slurm
mkdir -p "$SCRATCH"
# the T1w structural step (N4, Atropos: ~3 min per 1 mm T1w) is off here: this check is about the job array and
# its bitwise equality with a local run, and the step would add ~12 min; tests/test_end_to_end.py runs it
echo '{"structural": {"enabled": false}}' > "$SCRATCH/no-structural.json"
PARTICIPANT_OPTS="--registration fast --skip-bids-validation --config $SCRATCH/no-structural.json"
GROUP_OPTS="--template mni --n-permutations 200"
t_start=$(date +%s)
stamp() { echo "slurm_check: $1 ($(( $(date +%s) - t_start )) s so far)"; }
fail() { echo "slurm_check: FAILED: $*" >&2; exit 1; }

ci/slurm.sh start "$QSM_SLURM_DIR"
trap 'ci/slurm.sh stop "$QSM_SLURM_DIR"' EXIT
# shellcheck disable=SC1091
source "$QSM_SLURM_DIR/slurm.env"
stamp "SLURM up"

BIDS=$SCRATCH/bids
if [ ! -f "$BIDS/participants.tsv" ]; then
    "$ROOT/.venv/bin/qsm-bids-simulate" "$BIDS" --n-patients 2 --n-controls 2 --effect-scale 6 >/dev/null 2>&1
fi
stamp "cohort simulated"

# -- local reference (two participants at a time, like the demo)
LOCAL=$SCRATCH/local
labels=$(awk -F'\t' 'NR > 1 { sub(/^sub-/, "", $1); print $1 }' "$BIDS/participants.tsv")
pids=()
for l in $labels; do
    # shellcheck disable=SC2086
    "$ROOT/.venv/bin/qsm-bids" "$BIDS" "$LOCAL" participant --participant-label "$l" --n-cpus 1 \
        -w "$SCRATCH/work-local-$l" $PARTICIPANT_OPTS >"$SCRATCH/local-$l.log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}" || fail "local participant run (see $SCRATCH/local-*.log)"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || fail "local participant run (see $SCRATCH/local-*.log)"; done
stamp "local participant level done"

# -- the same on SLURM: job array + dependent group job
OUT=$SCRATCH/slurm-out
read -r array_id group_id < <(QSM_BIDS="$ROOT/.venv/bin/qsm-bids" examples/slurm/submit.sh "$BIDS" "$OUT" \
    --participant "$PARTICIPANT_OPTS" --group "$GROUP_OPTS")
echo "slurm_check: array job $array_id, group job $group_id (afterok)"
deadline=$(( $(date +%s) + 3600 ))
while squeue -h -j "$array_id,$group_id" 2>/dev/null | grep -q .; do
    if squeue -h -j "$group_id" -o '%r' | grep -q DependencyNeverSatisfied; then
        scancel "$group_id"; fail "a participant task failed; logs in $OUT/logs/slurm"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "jobs still queued after an hour"
    sleep 5
done
stamp "SLURM array and group job done"

n=0
for l in $labels; do
    code=$(cat "$OUT/logs/slurm/sub-${l}_exitcode" 2>/dev/null || echo missing)
    [ "$code" = 0 ] || fail "sub-$l: task exit code $code (log: $OUT/logs/slurm/participant_${array_id}_*.log)"
    n=$((n + 1))
done
[ "$(cat "$OUT/logs/slurm/group_exitcode" 2>/dev/null)" = 0 ] || fail "group job exit code (log: $OUT/logs/slurm/group_${group_id}.log)"
# SLURM's own record of each job (jobcomp/filetxt), independent of the scripts' files
jobcomp=$QSM_SLURM_DIR/log/jobcomp.txt
for id in $(seq 1 "$n"); do
    grep -E "ArrayJobId=$array_id ArrayTaskId=$id " "$jobcomp" | grep -q "JobState=COMPLETED .*ExitCode=0:0" \
        || fail "array task $id not recorded as COMPLETED with exit 0 in $jobcomp"
done
grep -E "^JobId=$group_id " "$jobcomp" | grep -q "JobState=COMPLETED .*ExitCode=0:0" \
    || fail "group job not recorded as COMPLETED with exit 0 in $jobcomp"
echo "slurm_check: $n array task(s) and the group job exited 0"
# participant outputs: identical to the local run, registrations included (both run with --n-cpus 1 and
# the same seed, which makes ANTs bitwise reproducible: tests/test_reproducible.py)
"$PY" ci/compare_outputs.py "$LOCAL" "$OUT" --only 'sub-*' \
    || fail "SLURM participant outputs differ from the local run"
# the group job: the same group level run here on the same participant results must give identical outputs
REGROUP=$SCRATCH/local-group-on-slurm-results
rm -rf "$REGROUP"; mkdir -p "$REGROUP"
cp -r "$OUT"/sub-* "$OUT/dataset_description.json" "$REGROUP"/
# shellcheck disable=SC2086
"$ROOT/.venv/bin/qsm-bids" "$BIDS" "$REGROUP" group --n-cpus 1 -w "$SCRATCH/work-regroup" $GROUP_OPTS \
    >"$SCRATCH/local-regroup.log" 2>&1 || fail "local group run (see $SCRATCH/local-regroup.log)"
"$PY" ci/compare_outputs.py "$REGROUP/group" "$OUT/group" || fail "the SLURM group job's outputs differ from a local run"
stamp "outputs equal the local run"

# -- tests against this SLURM (Dask SLURMCluster included)
"$PY" -m pytest -q -p no:cacheprovider tests/test_slurm.py
stamp "tests/test_slurm.py passed"

# -- the group level's permutations on a dask-jobqueue SLURMCluster, in 4 chunks (the reference ran them in one)
if "$ROOT/.venv/bin/qsm-bids" --help | grep -q -- "--dask-scheduler"; then
    cat >"$SCRATCH/dask-slurm.yaml" <<EOF
group:
  permutation_backend: dask
  permutation_chunk_size: 50
  dask_jobqueue:
    cluster: SLURMCluster
    n_workers: 2
    options: {cores: 1, processes: 1, memory: 1GB, walltime: "00:30:00", python: $PY,
              log_directory: $SCRATCH/dask-logs, scheduler_options: {dashboard_address: null}}
EOF
    DASK_OUT=$SCRATCH/dask-out
    mkdir -p "$DASK_OUT"
    cp -r "$OUT"/sub-* "$OUT/dataset_description.json" "$DASK_OUT"/
    # shellcheck disable=SC2086
    "$ROOT/.venv/bin/qsm-bids" "$BIDS" "$DASK_OUT" group --n-cpus 1 -w "$SCRATCH/work-dask" $GROUP_OPTS \
        --config "$SCRATCH/dask-slurm.yaml" >"$SCRATCH/dask-group.log" 2>&1 \
        || fail "group level on SLURMCluster (see $SCRATCH/dask-group.log)"
    grep -q "dask-jobqueue: SLURMCluster submitted" "$SCRATCH/dask-group.log" || fail "no SLURMCluster in the log"
    "$PY" ci/compare_outputs.py "$REGROUP/group" "$DASK_OUT/group" --only '*stat-*_statmap.nii.gz' \
        '*permutation_null.tsv' || fail "Dask-on-SLURM FWE maps differ from the single-process run"
    stamp "group level on SLURMCluster equals the single-process run"
else
    echo "slurm_check: this qsm-bids has no --dask option; the CLI group level on SLURMCluster was not run"
fi

echo "slurm_check: passed in $(( $(date +%s) - t_start )) s (scratch $SCRATCH)"
