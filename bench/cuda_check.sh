#!/usr/bin/env bash
# One short check of trainkit's CUDA path on a GPU machine, and the GPU numbers for the README.
#   bash bench/cuda_check.sh [DATA_ROOT] [OUT_DIR]      (about 5 minutes on an H100)
# OUT_DIR gets four short reports and one checkpoint written on the GPU (cuda_best.pt), to
# check on a CPU-only machine that it loads there; the run folders go to a temp folder.
# 1. the fast MNIST recipe on CUDA, command start to exit (time to accuracy);
# 2. fp16 autocast with a GradScaler: train, extend with resume (the scaler state travels in
#    the checkpoint), evaluate; checkpoints must hold CPU tensors only;
# 3. bench/overhead.py on CUDA: trainkit vs a hand-written loop (and Lightning if installed);
# 4. bench/overhead_resnet.py on CUDA: torchvision ResNet-18 (32x32) and ResNet-50 (224x224, bf16,
#    channels_last) against a hand-written loop, with MFU.
# Each step writes its output to OUT_DIR; a failing step does not stop the next one.
set -u
ROOT=${1:-../shared/data}
OUT=${2:-/tmp/trainkit_cuda_check}
PY=${PYTHON:-python3}
CKPT=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== 1. mnist_fast on cuda" | tee "$OUT/mnist_fast.txt"
start=$(date +%s%N)
$PY -m trainkit train configs/mnist_fast.yaml "data.root=$ROOT" "checkpoint.dir=$CKPT" --device cuda \
    2>&1 | grep -E "^epoch|^trained|error" | tee -a "$OUT/mnist_fast.txt"
echo "wall $(( ($(date +%s%N) - start) / 1000000 )) ms (command start to exit)" | tee -a "$OUT/mnist_fast.txt"
cp "$CKPT/mnist_fast/best.pt" "$OUT/cuda_best.pt" 2>/dev/null

echo "== 2. fp16 + GradScaler, resume, eval" | tee "$OUT/fp16.txt"
tiny="data.name=synthetic_images ~data.root ~data.download data.n_train=4096 data.n_test=512 scheduler=null
      name=fp16 checkpoint.dir=$CKPT trainer.precision=fp16 trainer.channels_last=true"
$PY -m trainkit train configs/mnist_cnn.yaml $tiny trainer.epochs=1 --device cuda -q 2>&1 | tee -a "$OUT/fp16.txt"
$PY -m trainkit resume "$CKPT/fp16" trainer.epochs=2 -q 2>&1 | tee -a "$OUT/fp16.txt"
$PY -m trainkit eval --ckpt "$CKPT/fp16/last.pt" --json 2>&1 | tee -a "$OUT/fp16.txt"
$PY - "$CKPT/fp16/last.pt" <<'EOF' 2>&1 | tee -a "$OUT/fp16.txt"
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
def devices(obj):
    if isinstance(obj, torch.Tensor):
        yield obj.device.type
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from devices(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from devices(v)
print("scaler state:", sorted(ckpt["scaler"] or {}), "scale", (ckpt["scaler"] or {}).get("scale"))
print("tensor devices in the checkpoint:", sorted(set(devices({k: v for k, v in ckpt.items() if k != "rng"}))))
print("epoch", ckpt["epoch"], "step", ckpt["step"], "cuda rng saved:", "cuda" in ckpt["rng"][0])
EOF

echo "== 3. overhead on cuda" | tee "$OUT/overhead.txt"
$PY bench/overhead.py --device cuda --root "$ROOT" --steps 600 --rounds 5 2>&1 | grep -v "round [0-9] done" \
    | tee -a "$OUT/overhead.txt"

echo "== 4. torchvision ResNets on cuda, with MFU" | tee "$OUT/overhead_resnet.txt"
$PY bench/overhead_resnet.py --device cuda 2>&1 | grep -v "round [0-9] done" | tee -a "$OUT/overhead_resnet.txt"
