#!/usr/bin/env bash
# Installed size of clipseek: the base package (fetch a real CLIP, index, search, serve) against it with the
# [export] extra (torch + torchvision + open_clip: training and fine-tuning). Each into a fresh virtual
# environment, from this checkout, with pip resolving as it does on this machine; the figure is the size of the
# environment's site-packages less that of an empty one, and the number of distributions installed.
#
#     bash bench/install_size.sh            # both
#     bash bench/install_size.sh .          # the base package only
set -euo pipefail
PYTHON=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/install-size-XXXXXX)
trap 'rm -rf "$work"' EXIT

site_mib() { du -sm "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1; }

"$PYTHON" -m venv "$work/empty"
empty=$(site_mib "$work/empty")
printf '| install | distributions | site-packages MiB (less an empty venv) | largest |\n|---|---:|---:|---|\n'
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("." ".[export]")
for target in "${targets[@]}"; do
  env="$work/venv"
  rm -rf "$env"
  "$PYTHON" -m venv "$env"
  "$env/bin/python" -m pip install -q --upgrade pip >/dev/null
  (cd "$repo" && "$env/bin/python" -m pip install -q "$target" >/dev/null)
  count=$("$env/bin/python" -m pip list --format=freeze 2>/dev/null | grep -vc '^pip==')
  site=$(site_mib "$env")
  purelib=$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  largest=$(du -sm "$purelib"/*/ 2>/dev/null | sort -rn | head -4 | awk '{n=$2; sub(".*/site-packages/","",n); sub("/$","",n); printf "%s%s %d", (NR>1?", ":""), n, $1}' || true)  # head closes the pipe early: not a failure
  printf '| pip install "clipseek%s" | %d | %d | %s |\n' "${target#.}" "$count" "$((site - empty))" "$largest"
done
"$work/venv/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.version.cuda)' 2>/dev/null \
  || echo "(torch not installed)"
