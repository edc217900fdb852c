"""Retrieval evaluation in Flickr8k's layout: Recall@K, MRR@100 (the metric of Vespa's text-image sample app),
median/mean rank.

Relevance: each caption's own image (one per caption, as in Flickr8k and ``clipseek synth``). Ranks are
pessimistic on ties: an image scoring exactly as the relevant one counts as ranked above it. Every dropped
query is counted with its reason, so the denominator never changes silently.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .collection import Collection
from .errors import ClipseekError
from .models.encoder import Encoder

SPLITS = ("test", "dev", "train", "all")
KS = (1, 5, 10)


class DatasetError(ClipseekError):
    pass


@dataclass
class EvalSet:
    root: Path
    split: str
    images: list[str]
    queries: list[tuple[str, str]]  # (image name, caption)
    dropped: Counter[str] = field(default_factory=Counter)


def load_dataset(root: Path, split: str = "test") -> EvalSet:
    """Read ``images/``, ``captions.txt`` (or ``Flickr8k.token.txt``) and the split list, counting what is dropped."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{root} has no images/ folder: point --data at a folder in Flickr8k's layout")
    present = {p.name for p in image_dir.iterdir() if p.is_file()}
    if not present:
        raise DatasetError(f"{image_dir} is empty: nothing to evaluate")
    dropped: Counter[str] = Counter()
    pairs = _read_captions(root, dropped)
    wanted: set[str] | None = None
    listed: set[str] = set()
    if split != "all":
        listing = root / f"Flickr_8k.{split}Images.txt"
        if listing.is_file():
            wanted = {line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()}
            listed = set(wanted)
            unknown = wanted - present
            if unknown:
                dropped["split lists an image that is not in images/"] += len(unknown)
            wanted &= present
        elif split != "test":
            raise DatasetError(f"{listing} not found: use --split all, or add the split list")
    seen: set[tuple[str, str]] = set()
    queries: list[tuple[str, str]] = []
    for name, caption in pairs:
        if wanted is not None and name not in wanted and name in present:
            continue  # another split's caption: not a query here
        if name not in present:
            if wanted is None or name in listed:
                dropped["caption names an image missing from images/"] += 1
            continue
        if (name, caption) in seen:
            dropped["duplicate caption line"] += 1
            continue
        seen.add((name, caption))
        queries.append((name, caption))
    images = sorted(wanted if wanted is not None else {n for n, _ in queries} | (present if split == "all" else set()))
    if not queries:
        raise DatasetError(f"no usable captions for split {split!r} in {root}")
    return EvalSet(root, split, images, queries, dropped)


def _read_captions(root: Path, dropped: Counter[str]) -> list[tuple[str, str]]:
    path = root / "captions.txt"
    token_file = root / "Flickr8k.token.txt"
    source = path if path.is_file() else token_file
    if not source.is_file():
        raise DatasetError(f"{root} has neither captions.txt nor Flickr8k.token.txt")
    return read_captions(source, dropped, strip_hash=True)


def read_captions(path: Path, dropped: Counter[str], *, strip_hash: bool) -> list[tuple[str, str]]:
    """``(image, caption)`` from lines of ``image<TAB>caption``, whitespace in captions collapsed.

    ``strip_hash`` drops Flickr8k's ``#N`` caption number from the image name. Lines that give no image or no
    caption are counted in ``dropped`` by reason, not returned. The one reader behind ``clipseek eval`` and
    ``clipseek finetune``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc}): save it as UTF-8") from exc
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if "\t" not in line:
            dropped["line without a tab between image and caption"] += 1
            continue
        name, caption = line.split("\t", 1)
        name = name.strip()
        if strip_hash:
            name = name.split("#", 1)[0]
        caption = " ".join(caption.split())
        if not name:
            dropped["line without an image"] += 1
            continue
        if not caption:
            dropped["empty caption"] += 1
            continue
        out.append((name, caption))
    return out


def ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of ``relevant[i]`` in row ``i`` of ``scores`` (ties count against it)."""
    own = scores[np.arange(len(scores)), relevant]
    out: np.ndarray = (scores >= own[:, None]).sum(axis=1).astype(np.int64)
    return out


@dataclass
class Metrics:
    model: str
    queries: int
    recall: dict[str, float]
    mrr_at_100: float
    median_rank: float
    mean_rank: float
    image_to_text_recall: dict[str, float]
    reciprocal_ranks: list[float] = field(repr=False, default_factory=list)
    ann_recall_vs_exact: float | None = None


def metrics(model: str, text_vecs: np.ndarray, image_vecs: np.ndarray, relevant: np.ndarray) -> Metrics:
    """All metrics from L2-normalised vectors; ``relevant[i]`` is caption i's image row."""
    scores = text_vecs @ image_vecs.T
    r = ranks(scores, relevant)
    rr = np.where(r <= 100, 1.0 / r, 0.0)
    # image → text: rank of the best-ranked caption of each image among all captions
    t_scores = scores.T
    best = np.full(len(image_vecs), np.iinfo(np.int64).max)
    for caption, image in enumerate(relevant):
        own = t_scores[image, caption]
        best[image] = min(best[image], int((t_scores[image] >= own).sum()))
    has = best < np.iinfo(np.int64).max
    i2t = {f"R@{k}": float(np.mean(best[has] <= k)) if has.any() else math.nan for k in KS}
    return Metrics(model, len(r), {f"R@{k}": float(np.mean(r <= k)) for k in KS}, float(rr.mean()),
                   float(np.median(r)), float(r.mean()), i2t, rr.tolist())


def embed_set(data: EvalSet, encoder: Encoder, cache_dir: Path, progress: Callable[[int, int], None] | None = None
              ) -> tuple[np.ndarray, list[str], list[str]]:
    """Image vectors for ``data.images`` from a cached collection (embedded once per dataset and model)."""
    from .indexer import Indexer

    with Collection.open(cache_dir, create=True) as coll:
        report = Indexer(coll, encoder, progress=progress).run([data.root / "images" / n for n in data.images])
        field_name = encoder.spec.field_name
        by_name = {Path(d.path or "").name: d.vectors[field_name] for d in coll.iter_documents()
                   if field_name in d.vectors}
    failed = [Path(p).name for p, _ in report.failed]
    names = [n for n in data.images if n in by_name]
    return np.stack([by_name[n] for n in names]), names, failed


def ann_recall(cache_dir: Path, field_name: str, text_vecs: np.ndarray, k: int = 10) -> float:
    """Recall@k of the HNSW plan against exact search over the cached collection, for these queries."""
    with Collection.open(cache_dir, readonly=True, exact_threshold=0) as coll:
        found = 0
        for q in text_vecs:
            exact = {h.docid for h in coll.search(q, field=field_name, hits=k, approximate=False).hits}
            approx = {h.docid for h in coll.search(q, field=field_name, hits=k).hits}
            found += len(exact & approx)
    return found / (k * len(text_vecs)) if len(text_vecs) else math.nan


def write_outputs(out: Path, data: EvalSet, results: Sequence[Metrics]) -> list[Path]:
    """results.json, results.csv and a PNG with the reciprocal-rank boxplot and the Recall@K bars."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"dataset": str(data.root), "split": data.split, "images": len(data.images),
           "queries": len(data.queries), "dropped": dict(data.dropped),
           "models": [{k: v for k, v in asdict(m).items() if k != "reciprocal_ranks"} for m in results]}
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "queries", "R@1", "R@5", "R@10", "MRR@100", "median_rank", "mean_rank",
                    "i2t_R@1", "i2t_R@5", "i2t_R@10", "ann_recall_vs_exact"])
        for m in results:
            w.writerow([m.model, m.queries, *(round(m.recall[f"R@{k}"], 4) for k in KS), round(m.mrr_at_100, 4),
                        m.median_rank, round(m.mean_rank, 2), *(round(m.image_to_text_recall[f"R@{k}"], 4) for k in KS),
                        "" if m.ann_recall_vs_exact is None else round(m.ann_recall_vs_exact, 4)])
    return [out / "results.json", out / "results.csv", plot(out / "results.png", data, results)]


def plot(path: Path, data: EvalSet, results: Sequence[Metrics]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.model for m in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(6 + 1.2 * len(results), 4.5))
    left.boxplot([m.reciprocal_ranks for m in results], tick_labels=names, showmeans=True)
    left.set_ylabel("reciprocal rank (MRR@100 = mean, ▲)")
    left.set_title("text → image reciprocal rank")
    width = 0.8 / len(results)
    for i, m in enumerate(results):
        xs = [j + i * width for j in range(len(KS))]
        bars = right.bar(xs, [m.recall[f"R@{k}"] for k in KS], width, label=m.model)
        right.bar_label(bars, fmt="%.2f", fontsize=7)
    right.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(KS))], [f"R@{k}" for k in KS])
    right.set_ylim(0, 1.05)
    right.set_title("text → image recall")
    right.legend(fontsize=8)
    fig.suptitle(f"{data.root.name} — split {data.split}: {len(data.images)} images, {len(data.queries)} captions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
