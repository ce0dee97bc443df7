#!/usr/bin/env bash
# One GPU session's checks, sized for about 5 minutes (synthetic data: the real data stays here):
#   1. both CLIs for 1 epoch with --precision 16-mixed on the test fixtures, and a check that the
#      colorization batches come from GPU memory (no host-to-device copy of the data per step)
#   2. colorization benchmark, full epochs, 32-true and 16-mixed (channels-last on: the CUDA default)
#   3. segmentation benchmark, ResNet-101 at 224 on 848 synthetic images, uncached run measured fully
# Usage: bash benchmarks/gpu_check.sh [DEST]   (DEST gets gpu.txt, results.jsonl and gpu_check.tgz, all logs)
set -u
cd "$(dirname "$0")/.."
dest="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$dest"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
work=$(mktemp -d)
out="$work/out"
mkdir -p "$out"
finish() {  # also when the time limit cuts the script short: keep what there is
  grep -h '^{' "$out"/*.log > "$out/results.jsonl" 2>/dev/null
  cp "$work"/results/*/*/summary.json "$out/" 2>/dev/null
  cp "$out/gpu.txt" "$out/results.jsonl" "$dest/" 2>/dev/null
  tar czf "$dest/gpu_check.tgz" -C "$out" . 2>/dev/null
  rm -rf "$work"
}
trap finish EXIT
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>"$out/$name.err"
  echo "=== $name: exit $? ($(date +%T))"
  grep -v '^{' "$out/$name.log" | tail -n 14
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, pytorch_lightning, torchmetrics, torchvision; print('torch', torch.__version__, 'lightning', pytorch_lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"

python3 - "$work" <<'PY' >"$out/fixtures.log" 2>&1
import sys
sys.path.insert(0, ".")
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17
write_cifar_folder(sys.argv[1] + "/cifar", n_per_batch=40, horse_every=2)
write_oxford17(sys.argv[1] + "/flowers", n_classes=3, per_class=12)
PY
step cli_color 45 python3 colorization.py UNet --epochs 1 --precision 16-mixed --accelerator gpu --devices 1 \
  --data-dir "$work/cifar" --results-dir "$work/results" --logs-dir "$work/logs"
step cli_seg 45 python3 segmentation.py --loss iou --backbone mobilenet_v3_large --weights none --image-size 64 \
  --epochs 1 --batch-size 4 --precision 16-mixed --accelerator gpu --devices 1 \
  --data-dir "$work/flowers" --results-dir "$work/results" --logs-dir "$work/logs"
step on_device 25 python3 - "$work/cifar" <<'PY'
import sys, warnings
sys.path.insert(0, ".")
warnings.simplefilter("ignore")
import pytorch_lightning as pl
from data.cifar import CIFARHorses
dm = CIFARHorses(sys.argv[1], download=False)
dm.trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False)
grey, target = next(iter(dm.train_dataloader()))
print("colorization batch devices:", grey.device, target.device, "(the data sits on the GPU)")
PY
step color_fp32 55 python3 benchmarks/colorization.py --synthetic --accelerator gpu --precision 32-true --epochs 3
step color_fp16 55 python3 benchmarks/colorization.py --synthetic --accelerator gpu --precision 16-mixed --epochs 3
step seg_r101 110 python3 benchmarks/segmentation.py --accelerator gpu --precision 16-mixed --full-uncached

ls "$work"/results/*/* 2>/dev/null
