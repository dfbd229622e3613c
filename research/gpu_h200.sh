#!/usr/bin/env bash
# research/GPU.md's figures in one call of a lent GPU machine (see GPU.md), from the root of the
# checkout it was sent with, after research/gpu_pack.sh filled .gpu/:
#
#   bash .gpu/src/research/gpu_h200.sh        # writes log.txt, env.txt, dmon.txt, results.tar.gz to $OUT
#
# A smoke run of the whole stage chain first (fails within a minute when something is missing), then,
# in priority order, each run cut short by what is left of BUDGET seconds (a run stopped early keeps
# its probes in its curve file): README's photo recipe (ResNet-50 at 224 px, batch 256) and the
# default CPU recipe on the photo copies; then the small-image ResNet-18 at full width and
# Fashion-MNIST 10k at 1,500 and 3,000 steps, as far as the budget reaches.
set -uo pipefail
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
START=$(date +%s)
BUDGET=${BUDGET:-500}
G=$PWD/.gpu
O=${OUT:-/tmp/gpu-out}
R=/tmp/res
mkdir -p "$O" "$R"
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((START + BUDGET - $(date +%s))); }
log() { echo "[$(elapsed) s] $*" | tee -a "$O/log.txt"; }
snap() { tar -czf "$O/results.tar.gz.$BASHPID" -C /tmp res && mv -f "$O/results.tar.gz.$BASHPID" "$O/results.tar.gz"; }
# run NAME CAP MIN CMD...: CMD under `timeout min(CAP, left)`, skipped when fewer than MIN seconds are left
run() {
  local name=$1 cap=$2 min=$3
  shift 3
  local t
  t=$(left)
  ((t > cap)) && t=$cap
  if ((t < min)); then
    log "SKIP $name: $(left) s left"
    return 9
  fi
  log "START $name (limit $t s)"
  timeout -k 5 "$t" "$@" >>"$R/$name.out" 2>&1
  local rc=$?
  log "END $name rc=$rc"
  tail -n 3 "$R/$name.out" | cut -c1-300 | tee -a "$O/log.txt"
  snap
  return $rc
}

{
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nproc
  free -g
  df -h /tmp /dev/shm
} >"$O/env.txt" 2>&1
log "installing $(ls "$G"/whl | wc -l) wheels"
[ -n "${SKIP_INSTALL:-}" ] ||  # a rehearsal on a machine that has the packages
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$G"/whl/*.whl ||
  {
    log "wheel install failed"
    exit 3
  }
export PYTHONPATH=/tmp/site:$G/src
mkdir -p /tmp/data/fm
tar -xf "$G/data/photo-copies.tar" -C /tmp/data && tar -xzf "$G/data/fashion-mnist-10k.tar.gz" -C /tmp/data/fm || exit 4
PC=${PC:-/tmp/data/photo-copies}
FM=${FM:-/tmp/data/fm/test}
D=${STEPS_DIVISOR:-1}  # a rehearsal: every step count divided by this, ResNet-50 at R50_SIZE px
python3 - >>"$O/env.txt" 2>&1 <<'EOF' || { log "imports failed"; cat "$O/env.txt"; exit 5; }
import sys, torch, torchvision, kornia, lightly, faiss, datasets, pydantic, numpy, pyarrow, lookalike, lookalike.data
import lookalike.stages.encoder.stage, lookalike.stages.evaluation.stage, lookalike.stages.embeddings.stage
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("torchvision", torchvision.__version__, "kornia", kornia.__version__, "lightly", lightly.__version__,
      "faiss", faiss.__version__, "datasets", datasets.__version__, "pydantic", pydantic.VERSION,
      "numpy", numpy.__version__, "pyarrow", pyarrow.__version__)
print("lookalike from", lookalike.__file__, lookalike.data.__file__)
import os
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))
elif os.environ.get("REQUIRE_CUDA", "1") == "1":  # a rehearsal elsewhere sets REQUIRE_CUDA=0
    sys.exit("torch sees no CUDA device")
EOF
log "$(tail -n 4 "$O/env.txt" | tr '\n' ' ')"
nvidia-smi dmon -s um -d 5 >"$O/dmon.txt" 2>&1 &
DMON=$!

B=.gpu/src/benchmarks
CHAIN="python3 $B/stage_chain.py"
CURVE="python3 $B/recipe_curve.py"
R50=(--set encoder.backbone=resnet50 --set encoder.input_size=${R50_SIZE:-224} --set encoder.crop_min_scale=null --set encoder.batch_size=256)
# 1. the whole chain on CUDA, 2 steps: dataset, encoder (bf16, kornia views, pinned memory), embeddings, index, evaluation
run smoke 150 60 $CHAIN --dataset $PC --name photo-copies --root /tmp/r/pc "${R50[@]}" --set encoder.steps=2 \
  --set tracking.mode=disabled --out $R/smoke_chain.json || {
  log "smoke failed: stopping"
  tail -n 40 $R/smoke.out
  exit 6
}
# 2. README's GPU photo recipe, 700 steps (the default recipe's count on this collection), probed every 140
run photo_resnet50 330 120 $CURVE --dataset $PC --root /tmp/r/pc "${R50[@]}" --set encoder.steps=$((700 / D)) \
  --probe-every 20 --curve $R/curve_photo_copies_resnet50.jsonl --out $R/recipe_curve_photo_copies_resnet50_cuda_h200.json
run photo_resnet50_chain 90 40 $CHAIN --dataset $PC --name photo-copies --root /tmp/r/pc "${R50[@]}" \
  --set encoder.steps=$((700 / D)) --set tracking.mode=disabled --out $R/quality_photo_copies_resnet50_cuda_h200.json
# 3. the default CPU recipe (ResNet-9 x0.25 at 32 px, 700 steps chosen by auto) on the same GPU
run photo_default 120 45 $CURVE --dataset $PC --root /tmp/r/pc --probe-every 20 \
  --curve $R/curve_photo_copies_default.jsonl --out $R/recipe_curve_photo_copies_default_cuda_h200.json
run photo_default_chain 60 30 $CHAIN --dataset $PC --name photo-copies --root /tmp/r/pc \
  --set tracking.mode=disabled --out $R/quality_photo_copies_default_cuda_h200.json
# 4. one after another (side by side, three processes with 16 torch and 16 OpenMP threads each made no
#    progress on 16 cores: GPU.md): README's small-image ResNet-18 recipe, Fashion-MNIST 10k longer
run photo_resnet18 150 60 $CURVE --dataset $PC --root /tmp/r/pc18 --set encoder.backbone=resnet-18 \
  --set encoder.width=1 --set encoder.batch_size=512 --set encoder.epochs=$((200 / D)) --probe-every 50 \
  --curve $R/curve_photo_copies_resnet18.jsonl --out $R/recipe_curve_photo_copies_resnet18_w1_cuda_h200.json
run fm10k_1500 200 60 $CURVE --dataset $FM --root /tmp/r/fm1500 --set encoder.steps=$((1500 / D)) --probe-every 10 \
  --curve $R/curve_fashion_mnist_10k_1500.jsonl --out $R/recipe_curve_fashion_mnist_10k_1500_cuda_h200.json
run fm10k_3000 300 60 $CURVE --dataset $FM --root /tmp/r/fm3000 --set encoder.steps=$((3000 / D)) --probe-every 20 \
  --curve $R/curve_fashion_mnist_10k_3000.jsonl --out $R/recipe_curve_fashion_mnist_10k_3000_cuda_h200.json
kill "$DMON" 2>/dev/null
snap
log "done; results:"
python3 - "$R" <<'EOF2' 2>&1 | tee -a "$O/log.txt"
import glob, json, sys
def short(m):
    return {k: m.get(k) for k in ("knn_accuracy", "precision_at_10")}
for f in sorted(glob.glob(sys.argv[1] + "/curve_*.jsonl")):
    print("==", f.split("/")[-1])
    for line in open(f):
        r = json.loads(line)
        print(" ", r["steps"], "steps", r["pretrain_seconds"], "s", "whitened", short(r["whitened"]))
for f in sorted(glob.glob(sys.argv[1] + "/recipe_curve_*.json")):
    d = json.load(open(f))
    print("==", f.split("/")[-1], "steps", d["steps"], "pretrain_s", d["pretrain_seconds"],
          "with probes", d["stage_seconds_with_probes"], {k: short(v["whitened"]) for k, v in d["baselines"].items()})
for f in sorted(glob.glob(sys.argv[1] + "/*_chain.json")) + sorted(glob.glob(sys.argv[1] + "/quality_*.json")):
    d = json.load(open(f))
    print("==", f.split("/")[-1], json.dumps({k: d[k] for k in ("run", "baselines", "encoder", "embeddings", "stage_seconds")}))
EOF2
