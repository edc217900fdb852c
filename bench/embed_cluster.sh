#!/usr/bin/env bash
# `clipseek embed` on a Ray cluster, in one go: run on the head node (or any machine that can reach it) with
# clipseek installed with the [ray] extra on every node, and the model fetched on every node (or a shared
# `local-dir:` folder). Prints the throughput and Ray Data's per-stage statistics: read+decode tasks vs the
# encoder actors, so you see what bounds the run.
#
#   bench/embed_cluster.sh SOURCE [MODEL] [WORKERS] [DEVICE]
#
#   SOURCE   a folder every node sees (NFS), a list of paths/URLs, or an object-store prefix (s3://bucket/photos/)
#   MODEL    default ViT-B/32
#   WORKERS  encoder actors: one per GPU, or one per machine on CPUs (default: the cluster's GPUs, else nodes)
#   DEVICE   cpu or cuda (default: cuda when the cluster has GPUs)
#
# Environment: RAY_ADDRESS (default auto), OUT (default ./embed-bench-<date>; removed first), BATCH (default 64).
set -euo pipefail
SOURCE=${1:?usage: bench/embed_cluster.sh SOURCE [MODEL] [WORKERS] [DEVICE]}
MODEL=${2:-ViT-B/32}
ADDRESS=${RAY_ADDRESS:-auto}
OUT=${OUT:-./embed-bench-$(date +%Y%m%d-%H%M%S)}
BATCH=${BATCH:-64}
read -r GPUS NODES < <(python - "$ADDRESS" <<'EOF'
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
r = ray.cluster_resources()
print(int(r.get("GPU", 0)), len([n for n in ray.nodes() if n["Alive"]]))
EOF
)
DEVICE=${4:-$([ "$GPUS" -gt 0 ] && echo cuda || echo cpu)}
WORKERS=${3:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo "$NODES")}
echo "cluster: $NODES nodes, $GPUS GPUs; $WORKERS encoder actors on $DEVICE; model $MODEL; batch $BATCH"
rm -rf "$OUT"
start=$(date +%s.%N)
clipseek embed "$SOURCE" --out "$OUT" --model "$MODEL" --ray "$ADDRESS" --workers "$WORKERS" \
    --device "$DEVICE" --batch-size "$BATCH" --ray-stats
end=$(date +%s.%N)
python - "$OUT" "$start" "$end" <<'EOF'
import sys
from clipseek.shards import ShardSet
n = len(ShardSet.open(sys.argv[1]))
seconds = float(sys.argv[3]) - float(sys.argv[2])
print(f"{n} items in {seconds:.1f} s: {n / seconds:.1f} items/s end to end (cluster already running)")
EOF
