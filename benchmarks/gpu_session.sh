#!/usr/bin/env bash
# A device session's GPU measurements in one command, prepared to fit the lent machine's
# 10-minute command limit (and 15 minutes of device time in all, its start included).
#
# Here, once:  mkdir -p .devdata && cp -r ../shared/data/mnist .devdata/   # git-ignored, 12 MB
# On the device (the device tool's `run`, carry [".devdata"], timeout_s 600):
#   bash benchmarks/gpu_session.sh .devdata "$OUT"
# or in two calls while the machine is warm (models stay in runs/gpu-session between them):
#   STAGES="train mnist" bash benchmarks/gpu_session.sh .devdata "$OUT"
#   STAGES="celeba global nsys" bash benchmarks/gpu_session.sh .devdata "$OUT"
#
# Stages, each under its own time limit so that one that fails or overruns costs only itself
# (its error is in log.txt and the next stage runs; the throughput script writes its record
# after each part, so a stage cut off keeps what it measured). The limits (seconds) are
# CLASSIFIER_LIMIT 50, VAE_LIMIT 70, MNIST_LIMIT 280, CELEBA_LIMIT 120, GLOBAL_LIMIT 60 and
# NSYS_LIMIT 50, sized from the first H200 session (benchmarks/results/gpu-2026-12-04): training
# took 28 s and 46 s there, the global explanation 36 s, and the throughput stages ran past
# 180 s and 90 s at five and three batch sizes.
#   1. env.txt: the GPU, driver, and JAX, jaxlib, Flax and PyTorch versions;
#   2. the MNIST classifier and VAE by the recipe (seconds on a GPU), into runs/gpu-session
#      (kept: a later call skips what is there);
#   3. mnist-gpu.json: attack throughput, float32 and bf16, batch 1,024 to 65,536, against the
#      PyTorch peers, and both schedules on real latents (benchmarks/attack_throughput.py);
#   4. celeba-gpu.json: the CelebA 64x64 workload, random weights (no faces travel);
#   5. global-mnist-gpu.json: the 70,000-image global explanation, stage by stage;
#   6. kernels.txt: nsys's kernel summary of a short MNIST attack, where nsys is installed.
# At most 8 files come back from $OUT; this writes 6 (env, log and four results).
#
# The environment variables below shrink every stage for a dry run on a CPU, e.g.
#   BATCHES=256 CELEBA_BATCHES=64 STEPS=2 REPEATS=1 REAL_COUNT=256 TORCH_LOOP=2 EPOCHS=1 \
#     LIMIT=2000 MAX_STEPS=20 bash benchmarks/gpu_session.sh ../shared/data /tmp/gpu-dry-run
# A stage cut off by its limit keeps the parts it finished, and log.txt the rows it printed.
set -uo pipefail
data=${1:?usage: gpu_session.sh DATA_DIR OUT_DIR (DATA_DIR holds mnist/)}
out=${2:?usage: gpu_session.sh DATA_DIR OUT_DIR}
BATCHES=${BATCHES:-1024,16384,65536}
CELEBA_BATCHES=${CELEBA_BATCHES:-256,1024}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-3}
REAL_COUNT=${REAL_COUNT:-4096}
TORCH_LOOP=${TORCH_LOOP:-32}
EPOCHS=${EPOCHS:-}     # empty: the recipe's (classifier 8, VAE 10, as benchmarks/RESULTS.md)
LIMIT=${LIMIT:-0}      # 0: all 70,000 images
MAX_STEPS=${MAX_STEPS:-500}
STAGES=${STAGES:-train mnist celeba global nsys}
runs=${RUNS:-runs/gpu-session}
mkdir -p "$out" "$runs"
log="$out/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
failed=()

wanted() { [[ " $STAGES " == *" $1 "* ]]; }

stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND under a time limit, logged
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit $limit s) at $((SECONDS - start)) s" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  python - <<'PY'
import importlib.metadata as m
for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
  try:
    print(name, m.version(name))
  except m.PackageNotFoundError:
    print(name, "not installed")
import jax
print("devices:", jax.devices())
PY
} >"$out/env.txt" 2>&1

if wanted train && [ ! -d "$runs/classifier" ]; then
  stage "train classifier" "${CLASSIFIER_LIMIT:-50}" python -m cfajax train classifier --dataset mnist \
      --data-dir "$data" --out "$runs/classifier" --no-progress --epochs "${EPOCHS:-8}"
fi
if wanted train && [ ! -d "$runs/vae" ]; then
  stage "train vae" "${VAE_LIMIT:-70}" python -m cfajax train vae --dataset mnist --data-dir "$data" \
      --out "$runs/vae" --no-progress --epochs "${EPOCHS:-10}"
fi
models=()
if [ -d "$runs/vae" ] && [ -d "$runs/classifier" ]; then
  models=(--vae "$runs/vae" --classifier "$runs/classifier")
fi

wanted mnist && stage "mnist throughput" "${MNIST_LIMIT:-280}" python benchmarks/attack_throughput.py \
    --workload mnist "${models[@]}" --data-dir "$data/mnist" --batch-sizes "$BATCHES" \
    --steps "$STEPS" --repeats "$REPEATS" \
    --real-count "$REAL_COUNT" --torch-loop-count "$TORCH_LOOP" --max-steps "$MAX_STEPS" \
    --out "$out/mnist-gpu.json"
wanted celeba && stage "celeba throughput" "${CELEBA_LIMIT:-120}" python benchmarks/attack_throughput.py \
    --workload celeba --batch-sizes "$CELEBA_BATCHES" --steps "$STEPS" --repeats "$REPEATS" \
    --real-count "${CELEBA_BATCHES##*,}" --torch-loop-count "$TORCH_LOOP" \
    --max-steps "$MAX_STEPS" --out "$out/celeba-gpu.json"
wanted global && stage "global explanation" "${GLOBAL_LIMIT:-60}" python benchmarks/global_explanation.py \
    "${models[@]}" --data-dir "$data/mnist" --limit "$LIMIT" --max-steps "$MAX_STEPS" \
    --repeats "$REPEATS" \
    --out "$out/global-mnist-gpu.json"
if wanted nsys && command -v nsys >/dev/null; then
  stage "nsys kernels" "${NSYS_LIMIT:-50}" nsys profile --stats=true --force-overwrite=true -o "$runs/attack" \
      python benchmarks/attack_throughput.py --workload mnist "${models[@]}" \
      --data-dir "$data/mnist" --batch-sizes "${BATCHES##*,}" --steps "$STEPS" --repeats 1 \
      --real-count 1024 --skip-torch
  grep -A40 "cuda_gpu_kern_sum" "$log" >"$out/kernels.txt" || true
elif wanted nsys; then
  echo "nsys is not installed: no kernel summary" | tee -a "$log"
fi

echo "done in $((SECONDS - start)) s; failed: ${failed[*]:-none}" | tee -a "$log"
[ ${#failed[@]} -eq 0 ]
