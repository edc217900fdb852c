#!/usr/bin/env bash
# Fine-tuning on a GPU machine, in one go: install clipseek with the training extra (a CUDA build of torch), then
# tune a random-init ViT-B/32's text tower on Flickr8k's training captions for one epoch with --device cuda and
# print the time per epoch, peak memory and the loss (bench/finetune.py vit). Run from the repository root:
#     CLIPSEEK_FLICKR8K=/path/to/flickr8k bash bench/finetune_gpu.sh
# Not run yet: no GPU machine ran it in the session that wrote it.
set -euo pipefail
python3 -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q --upgrade pip
.venv-gpu/bin/python -m pip install -q -e '.[export]'
.venv-gpu/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print(torch.cuda.get_device_name())"
.venv-gpu/bin/python bench/finetune.py vit --device cuda --epochs "${EPOCHS:-1}"
