"""``clipseek finetune``: adapt a CLIP model to a collection's own (image, caption) pairs.

The rules the code relies on:

- **Text mode** (the default) trains the text tower, its projection and the temperature against image vectors
  computed once by the base model's *exported* image tower — the very vectors a collection indexed with the base
  holds. The output's ``image.onnx`` is the base's file, byte for byte, and its spec names the base as
  ``image_model``: it searches (and indexes into) the base's field, so nothing is re-indexed.
- **Full mode** trains both towers (meant for a GPU); its vectors get a field of their own.
- Splits are by image: one image's captions never sit on two sides. Flickr8k's split lists are used when
  present; otherwise a hash of the image name puts ~10 % in dev and ~10 % in test, the same on every machine.
- The loss is CLIP's symmetric InfoNCE with its learned temperature, except that pairs sharing an image are not
  each other's negatives (a caption's own image never counts against it).
- Deterministic under ``seed``: every epoch's order derives from (seed, epoch), so a run resumed from its
  per-epoch checkpoint (``OUT.partial/checkpoint.pt``, replaced atomically) takes the same steps as one that
  never stopped.
- WiSE-FT: the published weights are (1-α)·base + α·tuned. ``auto`` tries α = 0, 0.1, …, 1 on the dev split and
  keeps the smallest α within 0.01 of the best mean recall (R@1, R@5, R@10): the most of the base's behaviour
  that costs (almost) nothing on the user's data. α = 0 is the base model.
- The result is exported through the one ONNX path every model takes and checked against the torch model.

Needs torch and open_clip (the ``[export]`` extra); searching with the result never does.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ClipseekError, ExportDependencyError, ImageError
from .evaluate import KS, metrics, read_captions
from .models import modeldir
from .models.spec import ModelSpec, parse_ref

Log = Callable[[str], None]
MODES = ("text", "full")
MIN_PAIRS = 50
ALPHAS = tuple(round(a / 10, 1) for a in range(11))
ALPHA_TOLERANCE = 0.01
BUCKET_BATCHES = 32
PARITY_MIN_COS = 0.9999
CHECKPOINT = "checkpoint.pt"
TEXT_TRAINABLE = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
                  "logit_scale")


class FinetuneError(ClipseekError):
    """Input fine-tuning cannot use, or a run it cannot continue; the message says what to do."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters; the defaults are what ``clipseek finetune`` runs."""

    mode: str = "text"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: float = 0.05  # fraction of all steps
    body_lr: float = 0.1  # every weight but the token embedding learns at lr × this (it holds what is known)
    wise_alpha: float | None = None  # None: auto (chosen on the dev split)
    seed: int = 0
    device: str = "cpu"

    def key(self) -> dict[str, Any]:
        """What a resumed run must share with the one that wrote the checkpoint."""
        out = asdict(self)
        out.pop("wise_alpha")  # chosen after training: changing it needs no retraining
        out.pop("device")
        return out


@dataclass
class Split:
    images: list[Path]
    pairs: list[tuple[int, str]]  # (row in images, caption)


@dataclass
class PairData:
    """Train, dev and test splits by image, and everything dropped with its reason."""

    root: Path
    train: Split
    dev: Split
    test: Split
    dropped: Counter[str] = field(default_factory=Counter)
    split_source: str = "hash of the image name"

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, split in (("train", self.train), ("dev", self.dev), ("test", self.test)):
            digest.update(name.encode())
            for path in split.images:
                st = path.stat()
                digest.update(f"{path.name}\0{st.st_size}\0".encode())
            for row, caption in split.pairs:
                digest.update(f"{row}\0{caption}\n".encode())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- the data

def load_pairs(data: Path) -> PairData:
    """A folder in Flickr8k's layout, or a TSV of ``path<TAB>caption`` (paths relative to the TSV's folder)."""
    dropped: Counter[str] = Counter()
    if data.is_dir():
        if not (data / "images").is_dir():
            raise FinetuneError(f"{data} has no images/ folder: give a folder in Flickr8k's layout (images/ and "
                                "captions.txt) or a TSV file of path<TAB>caption lines")
        captions = data / "captions.txt"
        if not captions.is_file():
            captions = data / "Flickr8k.token.txt"
        if not captions.is_file():
            raise FinetuneError(f"{data} has no captions.txt (lines of image<TAB>caption): add it")
        raw = [(data / "images" / n, c) for n, c in read_captions(captions, dropped, strip_hash=True)]
        root = data
    elif data.is_file():
        raw = [(data.parent / n, c) for n, c in read_captions(data, dropped, strip_hash=False)]
        root = data.parent
    else:
        raise FinetuneError(f"{data} does not exist: give a folder in Flickr8k's layout or a TSV of path<TAB>caption")
    by_image: dict[Path, list[str]] = {}
    seen: set[tuple[Path, str]] = set()
    missing: set[Path] = set()
    for path, caption in raw:
        if not path.is_file():
            dropped["caption names an image that does not exist"] += 1
            missing.add(path)
            continue
        if (path, caption) in seen:
            dropped["duplicate caption line"] += 1
            continue
        seen.add((path, caption))
        by_image.setdefault(path, []).append(caption)
    lists = _split_lists(data) if data.is_dir() else None
    assign: dict[Path, str] = {}
    for path in by_image:
        if lists is not None:
            assign[path] = next((s for s, names in lists.items() if path.name in names), "")
            if not assign[path]:
                dropped["image in no split list (not used)"] += len(by_image[path])
        else:
            h = int(hashlib.sha256(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % 10
            assign[path] = "dev" if h == 0 else "test" if h == 1 else "train"
    splits = {}
    for name in ("train", "dev", "test"):
        images = sorted(p for p, s in assign.items() if s == name)
        rows = {p: i for i, p in enumerate(images)}
        splits[name] = Split(images, [(rows[p], c) for p in images for c in by_image[p]])
    out = PairData(root, splits["train"], splits["dev"], splits["test"], dropped,
                   "the split lists" if lists is not None else "hash of the image name")
    if len(out.train.pairs) < MIN_PAIRS:
        raise FinetuneError(f"{data} gives {len(out.train.pairs)} training pairs (image, caption); fine-tuning needs "
                            f"at least {MIN_PAIRS}" + _dropped_text(dropped))
    if not out.dev.pairs:
        raise FinetuneError(f"{data} leaves no image for the dev split, which picks the WiSE-FT alpha: add images "
                            "(or a Flickr_8k.devImages.txt list)")
    return out


def _dropped_text(dropped: Counter[str]) -> str:
    return ("; dropped: " + ", ".join(f"{n} {reason}" for reason, n in dropped.most_common())) if dropped else ""


def _split_lists(root: Path) -> dict[str, set[str]] | None:
    lists = {}
    for name in ("train", "dev", "test"):
        found = sorted(root.glob(f"*{name}Images.txt"))
        if found:
            lists[name] = {ln.strip() for ln in found[0].read_text(encoding="utf-8").splitlines() if ln.strip()}
    if not lists:
        return None
    if "train" not in lists:
        raise FinetuneError(f"{root} has split lists but no *trainImages.txt: add one, or remove the split lists")
    return lists


# ---------------------------------------------------------------------------------------------------- the loss

def contrastive_loss(text: Any, image: Any, image_ids: Any, logit_scale: Any) -> Any:
    """CLIP's symmetric InfoNCE; pairs that share an image are not each other's negatives.

    Row ``b`` pairs caption ``b`` with image ``image_ids[b]``. In the text → image direction another row's copy of
    a caption's own image is masked (it would count the right answer as wrong); in image → text, the image's
    other captions are masked.
    """
    import torch
    import torch.nn.functional as F

    text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * text @ image.T
    same = image_ids[:, None] == image_ids[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ---------------------------------------------------------------------------------------------------- the models

def _need_torch() -> Any:
    try:
        import open_clip  # noqa: F401
        import torch
    except ImportError as exc:
        raise ExportDependencyError("a fine-tune", "torch and open_clip") from exc
    return torch


def _torch_installed() -> None:
    """Raise if torch or open_clip is missing, without importing them (open_clip and torchvision take seconds:
    a refusal in words should not wait for them)."""
    from .models.loader import torch_installed

    if not torch_installed():
        raise ExportDependencyError("a fine-tune", "torch and open_clip")


def base_torch_model(base: str, spec: ModelSpec, folder: Path, log: Log) -> Any:
    """The base model in torch: shipped weights (``weights.npz``, as the tiny model has) or the registry's."""
    from . import paths
    from .models.loader import _load_open_clip, download_weights
    from .train import WEIGHTS_FILE, load_weights

    if (folder / WEIGHTS_FILE).is_file():
        return load_weights(spec, folder / WEIGHTS_FILE)
    if parse_ref(base).folder is not None or not spec.weights:
        raise FinetuneError(f"{base} has no torch weights to start from ({folder / WEIGHTS_FILE} is missing): "
                            "fine-tune a registry model (see `clipseek models`) or the bundled tiny")
    weights = download_weights(spec, paths.cache_dir() / "weights", log)
    return _load_open_clip(spec, weights)


def trainable(name: str, mode: str) -> bool:
    return mode == "full" or name.startswith(TEXT_TRAINABLE)


def wise(base: dict[str, Any], tuned: dict[str, Any], alpha: float) -> dict[str, Any]:
    """(1-α)·base + α·tuned for every floating-point tensor; others (buffers of ints) from ``tuned``."""
    return {k: ((1 - alpha) * base[k] + alpha * v) if v.is_floating_point() else v for k, v in tuned.items()}


# ---------------------------------------------------------------------------------------------------- the run

@dataclass
class FinetuneResult:
    out: Path
    alpha: float
    curve: list[dict[str, float]]
    before: dict[str, float]
    after: dict[str, float]
    losses: list[float]
    seconds_per_epoch: float
    resumed_from: int
    parity_cos: float
    dropped: dict[str, int]
    failed_images: list[tuple[str, str]]


def finetune(data: Path | PairData, base: str, out: Path, config: FinetuneConfig = FinetuneConfig(), *,
             force: bool = False, log: Log | None = None, progress: bool = True,
             torch_model: Any = None, threads: int | None = None) -> FinetuneResult:
    """Fine-tune ``base`` (a model name or ``local-dir:``) on ``data`` and write the model folder ``out``.

    ``torch_model`` gives the base in torch directly (benchmarks of random-init architectures); it must hold the
    weights the base's exported towers were made from.
    """
    say = log or (lambda _m: None)
    _torch_installed()  # the cheap checks first; torch is imported once the arguments and the data are good
    if config.mode not in MODES:
        raise FinetuneError(f"unknown mode {config.mode!r}: use one of {', '.join(MODES)}")
    if config.epochs < 1 or config.batch_size < 2 or not config.lr > 0:
        raise FinetuneError("epochs must be >= 1, batch size >= 2 and the learning rate > 0")
    if config.wise_alpha is not None and not 0 <= config.wise_alpha <= 1:
        raise FinetuneError(f"the WiSE-FT alpha must be between 0 and 1 (or auto), not {config.wise_alpha}")
    if out.exists() and not force:
        raise FinetuneError(f"{out} already exists: choose another --out, or pass --force to replace it")
    pairs = data if isinstance(data, PairData) else load_pairs(data)

    from .models import load_model
    from .models.loader import resolve

    # fp32 in ONNX Runtime on every host: the image vectors it trains against, and the before/after figures, are
    # then the same numbers on a CPU with bf16 (where load_model would choose OpenVINO bf16) as without, and the
    # base is measured on the same runtime as the exported result
    base_encoder = load_model(base, threads=threads, backend="onnxruntime", precision="fp32")
    base_folder = resolve(base)
    torch = _need_torch()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("--device cuda: torch sees no usable CUDA GPU here (torch.cuda.is_available() is "
                            "False); run with --device cpu, or install a CUDA build of torch")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    spec = base_encoder.spec
    work = Path(f"{out}.partial")
    key = {"base": base_encoder.ref, "base_files": modeldir.read_manifest(base_folder).get("files", {}),
           "data": pairs.fingerprint(), "config": config.key()}
    start_epoch, state = _open_work(work, key, torch)

    model = torch_model if torch_model is not None else base_torch_model(base, spec, base_folder, say)
    model = model.float().eval()
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = torch.device(config.device)
    model.to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name, config.mode))

    # The image side: cached vectors (text mode) or preprocessed pixels (full mode).
    failed: list[tuple[str, str]] = []
    images = _image_side(pairs, base_encoder, config.mode, work, failed, say, progress)
    for split_name in ("train", "dev", "test"):
        split = getattr(pairs, split_name)
        ok = images[split_name][1]
        kept = [(r, c) for r, c in split.pairs if ok[r]]
        if len(kept) < len(split.pairs):
            pairs.dropped[f"image could not be decoded ({split_name})"] += len(split.pairs) - len(kept)
        split.pairs = kept
    if len(pairs.train.pairs) < MIN_PAIRS:
        raise FinetuneError(f"only {len(pairs.train.pairs)} training pairs have a readable image; fine-tuning needs "
                            f"at least {MIN_PAIRS}")

    from .models.export import text_tower

    encode_text = text_tower(model)
    tokenizer = base_encoder.tokenizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    words = [p for n, p in named if n == "token_embedding.weight"]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if n != "token_embedding.weight" and not (p.ndim >= 2 and "embedding" not in n)]
    groups = [{"params": words, "weight_decay": 0.0, "scale": 1.0},
              {"params": decay, "weight_decay": config.weight_decay, "scale": config.body_lr},
              {"params": rest, "weight_decay": 0.0, "scale": config.body_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = max(1, len(pairs.train.pairs) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup * total))
    losses: list[float] = []
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        losses = list(state["losses"])
        say(f"resuming from the checkpoint of epoch {start_epoch} in {work}")

    train_image = images["train"][0]
    rows = np.asarray([r for r, _ in pairs.train.pairs])
    captions = [c for _, c in pairs.train.pairs]
    lengths = tokenizer.lengths(tokenizer(captions))
    epoch_seconds: list[float] = []
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, unit="step", desc="finetune",
               disable=None if progress else True)
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            model.train()
            batches = epoch_batches(lengths, config.batch_size, np.random.default_rng([config.seed, epoch]))
            running = 0.0
            for i, idx in enumerate(batches):
                step = epoch * steps_per_epoch + i
                lr = config.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
                for group in opt.param_groups:
                    group["lr"] = lr * group["scale"]
                tokens = tokenizer([captions[j] for j in idx])
                tokens = tokens[:, : int(tokenizer.lengths(tokens).max())]  # exact for a causal text tower
                text = encode_text(torch.from_numpy(tokens).to(device))
                ids = torch.from_numpy(rows[idx]).to(device)
                if config.mode == "text":
                    image = torch.from_numpy(train_image[rows[idx]]).to(device)
                else:
                    image = model.encode_image(torch.from_numpy(np.asarray(train_image[rows[idx]])).to(device))
                loss = contrastive_loss(text, image, ids, model.logit_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            losses.append(running / len(batches))
            epoch_seconds.append(time.perf_counter() - started)
            model.eval()
            _save_checkpoint(work, key, epoch + 1, model, opt, losses, config.mode, torch)
            say(f"epoch {epoch + 1}/{config.epochs}: mean loss {losses[-1]:.4f}, "
                f"temperature {1 / model.logit_scale.exp().item():.4f}, {epoch_seconds[-1]:.0f}s")
    finally:
        bar.close()

    tuned_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base_cpu = {k: v.to(device) for k, v in base_state.items()}
    curve = []
    for alpha in (ALPHAS if config.wise_alpha is None else (config.wise_alpha,)):
        model.load_state_dict(wise(base_cpu, tuned_state, alpha))
        m = _split_metrics(model, encode_text, tokenizer, pairs.dev, images["dev"][0], config.mode, device, torch)
        curve.append({"alpha": alpha, **m})
    best = max(c["mean"] for c in curve)
    alpha = min(c["alpha"] for c in curve if c["mean"] >= best - ALPHA_TOLERANCE)
    say("WiSE-FT on dev: " + ", ".join(f"α={c['alpha']:.1f} R@1 {c['R@1']:.3f}" for c in curve) + f" → α={alpha}")
    model.load_state_dict(wise(base_cpu, tuned_state, alpha))
    model.to("cpu")

    result_dir = work / "model"
    shutil.rmtree(result_dir, ignore_errors=True)
    tuned_spec = _tuned_spec(spec, base_encoder.ref, config, out, key)
    from .models.export import export_towers

    say("exporting to ONNX")
    export_towers(model, result_dir, image_size=spec.image_size, context_length=spec.context_length,
                  towers=("text",) if config.mode == "text" else ("text", "image"))
    if config.mode == "text":
        shutil.copyfile(base_folder / modeldir.IMAGE_FILE, result_dir / modeldir.IMAGE_FILE)
    from .train import WEIGHTS_FILE, save_weights

    save_weights(model, result_dir / WEIGHTS_FILE)  # torch weights: the result can be tuned again
    from .models.encoder import OnnxEncoder

    tuned_encoder = OnnxEncoder(result_dir, tuned_spec, threads=threads)
    parity = _parity(model, encode_text, tokenizer, tuned_encoder, pairs, images, config.mode, torch)
    if parity < PARITY_MIN_COS:
        raise FinetuneError(f"the exported text tower differs from the torch model (cos {parity:.6f} < "
                            f"{PARITY_MIN_COS}): please report this; {work} holds the trained checkpoint")
    before = _onnx_metrics(base_encoder, pairs.test, images["test"], config.mode)
    after = _onnx_metrics(tuned_encoder, pairs.test, images["test"], config.mode)
    record = {
        "base": base_encoder.ref, "mode": config.mode, "data": str(pairs.root), "data_fingerprint": key["data"],
        "splits": {s: {"images": len(getattr(pairs, s).images), "pairs": len(getattr(pairs, s).pairs)}
                   for s in ("train", "dev", "test")},
        "split_source": pairs.split_source, "dropped": dict(pairs.dropped),
        "config": asdict(config), "wise_alpha": alpha, "wise_curve_dev": curve,
        "test_before": before, "test_after": after, "epoch_losses": [round(x, 5) for x in losses],
        "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 2) if epoch_seconds else None,
        "export_parity_cos": round(parity, 7),
    }
    modeldir.write_manifest(result_dir, tuned_spec, finetune=record)
    if out.exists():
        shutil.rmtree(out)
    result_dir.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(out, alpha, curve, before, after, losses,
                          float(np.mean(epoch_seconds)) if epoch_seconds else 0.0, start_epoch, parity,
                          dict(pairs.dropped), failed)


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of caption indices: shuffled, then sorted by token length within runs of
    :data:`BUCKET_BATCHES` batches, cut into batches, and the batches shuffled; partial batches are dropped.

    The text tower runs only up to a batch's longest caption (exact, it is causal), so a batch of similar
    lengths costs what its captions need: on Flickr8k a random batch of 128 runs to 28 tokens, the mean caption
    is 14, and a step's cost grows with the length. Sorting within a run of batches, not globally, keeps the
    batches' make-up (their negatives) random beyond length."""
    order = rng.permutation(len(lengths))
    run = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), run):
        part = order[start:start + run]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
    if not batches:  # fewer captions than one batch: they are the batch
        return [order]
    return [batches[i] for i in rng.permutation(len(batches))]


def _tuned_spec(spec: ModelSpec, base_ref: str, config: FinetuneConfig, out: Path, key: dict[str, Any]) -> ModelSpec:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    data = spec.to_dict()
    data.update(name=f"{spec.name}+ft:{out.name}", aliases=[], bundled_dir=None, weights={},
                description=f"{spec.name} fine-tuned ({config.mode} mode) into {out.name}",
                pretrained=f"finetune of {base_ref}")
    if config.mode == "text":
        data["image_model"] = spec.image_model or base_ref
    else:
        data.update(slug=f"{spec.slug}_ft_{digest}", image_model=None)
    return ModelSpec.from_dict(data)


def _image_side(pairs: PairData, encoder: Any, mode: str, work: Path, failed: list[tuple[str, str]], say: Log,
                progress: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split: (image vectors or pixels, which rows decoded). Vectors are cached in the work folder."""
    from tqdm import tqdm

    out = {}
    for name in ("train", "dev", "test"):
        split = getattr(pairs, name)
        cache = work / f"{name}-{mode}.npy"
        ok_cache = work / f"{name}-{mode}-ok.npy"
        if cache.is_file() and ok_cache.is_file():
            out[name] = (np.load(cache, mmap_mode="r"), np.load(ok_cache))
            continue
        ok = np.zeros(len(split.images), dtype=bool)
        size = encoder.spec.image_size
        shape = (len(split.images), encoder.dim) if mode == "text" else (len(split.images), 3, size, size)
        tmp = work / f".{name}-{mode}.npy"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        what = "embedding" if mode == "text" else "preparing"
        say(f"{what} {len(split.images)} {name} images with the base model's image tower")
        with tqdm(total=len(split.images), unit="img", desc=f"{name} images",
                  disable=None if progress else True) as bar:
            for start in range(0, len(split.images), 64):
                chunk = split.images[start:start + 64]
                pixels, rows = [], []
                for i, path in enumerate(chunk):
                    try:
                        pixels.append(encoder.preprocess(path))
                        rows.append(start + i)
                    except ImageError as exc:
                        failed.append((str(path), str(exc)))
                if pixels:
                    stack = np.stack(pixels)
                    arr[rows] = encoder.embed_pixels(stack) if mode == "text" else stack
                    ok[rows] = True
                bar.update(len(chunk))
        arr.flush()
        del arr
        os.replace(tmp, cache)
        np.save(ok_cache, ok)
        out[name] = (np.load(cache, mmap_mode="r"), ok)
    return out


def _open_work(work: Path, key: dict[str, Any], torch: Any) -> tuple[int, dict[str, Any] | None]:
    """(first epoch to run, checkpoint state) — refusing a folder another run's checkpoint is in."""
    stamp = work / "run.json"
    wanted = json.dumps(key, sort_keys=True)
    if work.exists():
        if not stamp.is_file() or stamp.read_text(encoding="utf-8") != wanted:
            raise FinetuneError(f"{work} holds another run's work (other data, base model or settings): re-run that "
                                "command to continue it, or delete the folder to start this one")
        ckpt = work / CHECKPOINT
        if ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            return int(state["epoch"]), state
        return 0, None
    work.mkdir(parents=True)
    stamp.write_text(wanted, encoding="utf-8")
    return 0, None


def _save_checkpoint(work: Path, key: dict[str, Any], epoch: int, model: Any, opt: Any, losses: list[float],
                     mode: str, torch: Any) -> None:
    """Replace the checkpoint atomically; when the disk fills, the previous one stays and the error says so."""
    state = {"epoch": epoch, "losses": losses, "optimizer": opt.state_dict(),
             "model": {k: v for k, v in model.state_dict().items() if trainable(k, mode)}}
    tmp = work / f".{CHECKPOINT}.tmp"
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialised first, so that a full disk surfaces as an OSError of our own write
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, work / CHECKPOINT)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        previous = f"the checkpoint of epoch {epoch - 1} is intact" if epoch > 1 else "no epoch was checkpointed yet"
        reason = "disk full" if exc.errno == errno.ENOSPC else str(exc)
        raise FinetuneError(f"could not write the checkpoint of epoch {epoch} into {work} ({reason}); {previous}: "
                            "free space, then re-run the same command to continue") from exc


def _text_vectors(encode_text: Any, tokenizer: Any, captions: Sequence[str], device: Any, torch: Any) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(captions), 256):
            tokens = tokenizer(list(captions[i:i + 256]))
            tokens = tokens[:, : int(tokenizer.lengths(tokens).max())]
            v = torch.nn.functional.normalize(encode_text(torch.from_numpy(tokens).to(device)), dim=-1)
            out.append(v.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _image_vectors(model: Any, side: np.ndarray, mode: str, device: Any, torch: Any) -> np.ndarray:
    if mode == "text":
        return np.asarray(side)
    out = []
    with torch.no_grad():
        for i in range(0, len(side), 128):
            v = model.encode_image(torch.from_numpy(np.array(side[i:i + 128])).to(device))
            out.append(torch.nn.functional.normalize(v, dim=-1).float().cpu().numpy())
    return np.concatenate(out)


def _recall(text: np.ndarray, image: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    m = metrics("", text, image, relevant)
    out = {k: round(v, 4) for k, v in m.recall.items()}
    out["mean"] = round(float(np.mean([m.recall[f"R@{k}"] for k in KS])), 4)
    out["MRR@100"] = round(m.mrr_at_100, 4)
    return out


def _split_metrics(model: Any, encode_text: Any, tokenizer: Any, split: Split, side: np.ndarray, mode: str,
                   device: Any, torch: Any) -> dict[str, float]:
    text = _text_vectors(encode_text, tokenizer, [c for _, c in split.pairs], device, torch)
    image = _image_vectors(model, side, mode, device, torch)
    return _recall(text, image, np.asarray([r for r, _ in split.pairs]))


def _onnx_metrics(encoder: Any, split: Split, side: tuple[np.ndarray, np.ndarray], mode: str) -> dict[str, float]:
    """Test-split recall through the exported ONNX towers (what search will compute)."""
    if not split.pairs:
        return {}
    text = encoder.embed_texts([c for _, c in split.pairs])
    image = np.asarray(side[0]) if mode == "text" else encoder.embed_pixels(np.asarray(side[0]))
    return _recall(text, image, np.asarray([r for r, _ in split.pairs]))


def _parity(model: Any, encode_text: Any, tokenizer: Any, encoder: Any, pairs: PairData,
            images: dict[str, tuple[np.ndarray, np.ndarray]], mode: str, torch: Any) -> float:
    """The smallest cosine between the torch model and its ONNX export (``encoder``), on dev captions (and images)."""
    captions = [c for _, c in pairs.dev.pairs[:256]]
    want = _text_vectors(encode_text, tokenizer, captions, torch.device("cpu"), torch)
    got = encoder.embed_texts(captions)
    cos = float(np.min(np.sum(want * got, axis=1)))
    if mode == "full":
        side = np.asarray(images["dev"][0][:64])
        want = _image_vectors(model, side, "full", torch.device("cpu"), torch)
        cos = min(cos, float(np.min(np.sum(want * encoder.embed_pixels(side), axis=1))))
    return cos
