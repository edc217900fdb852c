#!/usr/bin/env bash
# Encoders on a GPU machine, in one go: install clipseek with ONNX Runtime's CUDA build and the export extra,
# export a random-init ViT-B/32, then measure (1) image throughput end to end — `clipseek index` of the Flickr8k
# JPEGs with --device cuda --batch-size 256 — and (2) one 8-word text query's p50 on the GPU.
# Targets (issue 15, one data-centre GPU): >= 3,000 img/s end to end, text p50 <= 2 ms. Run from the repo root:
#     CLIPSEEK_FLICKR8K=/path/to/flickr8k bash bench/gpu.sh
# Not run yet: the sessions that wrote it were lent no GPU machine.
set -euo pipefail
FLICKR="${CLIPSEEK_FLICKR8K:-../shared/data/flickr8k}"
python3 -m venv .venv-gpu
PY=.venv-gpu/bin/python
$PY -m pip install -q --upgrade pip
$PY -m pip install -q -e '.[export]'
$PY -m pip uninstall -q -y onnxruntime
$PY -m pip install -q onnxruntime-gpu
$PY - <<'PY'
import onnxruntime as ort
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
PY
WORK=$(mktemp -d)
$PY - "$WORK" <<'PY'
import sys
from pathlib import Path
import open_clip, torch
from clipseek.models import get_spec
from clipseek.models.loader import export_model
spec = get_spec("ViT-B/32")
torch.manual_seed(0)
export_model(open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True), spec, Path(sys.argv[1]) / "vit")
PY
export CLIPSEEK_CACHE="$WORK/cache" CLIPSEEK_HOME="$WORK/home"
start=$(date +%s.%N)
$PY -m clipseek.cli index "$FLICKR/images" --collection "$WORK/c" --model "local-dir:$WORK/vit" --device cuda \
    --batch-size 256 --workers "$(nproc)"
end=$(date +%s.%N)
n=$(ls "$FLICKR/images" | wc -l)
echo "end to end: $n images in $(echo "$end - $start" | bc) s = $(echo "$n / ($end - $start)" | bc) img/s (incl. start-up)"
$PY - "$WORK" <<'PY'
import statistics, sys, time
from pathlib import Path
from clipseek.models import Runtime, open_encoder
enc = open_encoder(Path(sys.argv[1]) / "vit", runtime=Runtime("onnxruntime", "fp32", "cuda"))
q = "a black dog runs across the green grass today"
for _ in range(20):
    enc.embed_texts([q])
times = []
for _ in range(200):
    t = time.perf_counter(); enc.embed_texts([q]); times.append(time.perf_counter() - t)
print(f"text query p50 {statistics.median(times) * 1000:.2f} ms on {enc.describe()}")
PY
