"""Fine-tuning, measured: what `clipseek finetune` gains, what it costs, and what it keeps.

    .venv/bin/python bench/finetune.py tiny [--mode text|full]     # shifted synth: train 3000, fresh sets of 1000
    .venv/bin/python bench/finetune.py flickr-tiny                  # tiny on Flickr8k train → test
    .venv/bin/python bench/finetune.py vit [--device cuda] [--epochs 1]   # random-init ViT-B/32, Flickr8k train

Every run is the command's code path (`clipseek.finetune.finetune`) with its defaults unless a flag says
otherwise; recall is text → image R@1/5/10 through the exported ONNX towers, each caption's one image relevant.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipseek import load_model, synth  # noqa: E402
from clipseek.evaluate import load_dataset, metrics  # noqa: E402
from clipseek.finetune import FinetuneConfig, finetune  # noqa: E402

FLICKR = Path(os.environ.get("CLIPSEEK_FLICKR8K", Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))


def recall(encoder, folder: Path, split: str = "all") -> dict[str, float]:
    data = load_dataset(folder, split)
    image = encoder.embed_images([folder / "images" / n for n in data.images])
    row = {n: i for i, n in enumerate(data.images)}
    text = encoder.embed_texts([c for _, c in data.queries])
    m = metrics("", text, image, np.asarray([row[n] for n, _ in data.queries]))
    return {k: round(v, 3) for k, v in m.recall.items()}


def row(label: str, r: dict[str, float]) -> str:
    return f"| {label} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['R@10']:.3f} |"


def tiny(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ft-bench-"))
    started = time.perf_counter()
    train = synth.write_dataset(work / "train", args.n, args.seed, variant="shifted")
    shifted = synth.write_dataset(work / "shifted", 1000, args.eval_seed, variant="shifted")
    original = synth.write_dataset(work / "original", 1000, args.eval_seed + 1)
    print(f"rendered in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    result = finetune(train, "tiny", work / "tuned", FinetuneConfig(mode=args.mode), log=print, progress=False)
    minutes = (time.perf_counter() - started) / 60
    base, tuned = load_model("tiny"), load_model(f"local-dir:{result.out}")
    print(f"\ntiny, --mode {args.mode}, defaults; train: shifted seed {args.seed}, {args.n} images; "
          f"{minutes:.1f} min end to end (alpha {result.alpha}, {result.seconds_per_epoch:.1f} s/epoch)\n")
    print("| model | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    sets = ((f"shifted, seed {args.eval_seed}", shifted), (f"original, seed {args.eval_seed + 1}", original))
    for label, folder in sets:
        print(row(f"base tiny — {label}", recall(base, folder)))
        print(row(f"tuned — {label}", recall(tuned, folder)), flush=True)


def flickr_tiny(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ft-bench-"))
    started = time.perf_counter()
    result = finetune(FLICKR, "tiny", work / "tuned", FinetuneConfig(mode=args.mode), log=print, progress=False)
    print(f"\ntiny on Flickr8k train ({args.mode} mode, defaults): {(time.perf_counter() - started) / 60:.1f} min, "
          f"alpha {result.alpha}\n")
    print("| Flickr8k test | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print(row("base tiny", result.before))
    print(row("tuned", result.after))


def vit(args: argparse.Namespace) -> None:
    """Random-init ViT-B/32 (no weights can be downloaded here): exported first, then tuned on Flickr8k train."""
    import open_clip
    import torch

    from clipseek.models.loader import export_model
    from clipseek.models.registry import get_spec

    work = Path(tempfile.mkdtemp(prefix="ft-bench-"))
    data: Path = FLICKR
    if args.captions:  # a subset of the training split, to time an epoch without running the whole of one
        train = set((FLICKR / "Flickr_8k.trainImages.txt").read_text().split())
        lines = [ln for ln in (FLICKR / "captions.txt").read_text().splitlines()
                 if ln.split("\t", 1)[0].split("#")[0] in train and (FLICKR / "images" / ln.split("\t")[0]).is_file()]
        data = work / "subset.tsv"
        data.write_text("\n".join(f"{FLICKR / 'images' / ln.split(chr(9))[0]}\t{ln.split(chr(9), 1)[1]}"
                                   for ln in lines[: args.captions]) + "\n")
    spec = get_spec("ViT-B/32")
    torch.manual_seed(0)
    model = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=spec.quick_gelu)
    export_model(model, spec, work / "base")
    config = FinetuneConfig(epochs=args.epochs, device=args.device, wise_alpha=1.0)
    started = time.perf_counter()
    result = finetune(data, f"local-dir:{work / 'base'}", work / "tuned", config, log=print, progress=False,
                      torch_model=model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = json.loads((result.out / "clipseek.json").read_text())["finetune"]
    pairs = record["splits"]["train"]["pairs"]
    print(f"\nViT-B/32 (random init), text mode, {args.device}: {pairs} training captions, "
          f"batch {config.batch_size}; {result.seconds_per_epoch:.0f} s per epoch of training steps "
          f"(= {result.seconds_per_epoch * 30000 / pairs / 60:.1f} min per 30,000 captions); "
          f"whole run {(time.perf_counter() - started) / 60:.1f} min; peak RSS {peak:.0f} MiB; "
          f"epoch losses {record['epoch_losses']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["tiny", "flickr-tiny", "vit"])
    ap.add_argument("--mode", choices=["text", "full"], default="text")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--eval-seed", type=int, default=777)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--captions", type=int, default=0, help="vit: time on the first N training captions only")
    args = ap.parse_args()
    {"tiny": tiny, "flickr-tiny": flickr_tiny, "vit": vit}[args.part](args)


if __name__ == "__main__":
    main()
