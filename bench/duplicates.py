"""Near-duplicate groups: precision and recall of `clipseek duplicates` across thresholds, on a labelled set.

    .venv/bin/python bench/duplicates.py [--n 300] [--seed 0] [--model tiny] [--flickr ../shared/data/flickr8k]

The set (tests/dupset.py): n distinct Flickr8k photos, most with one or two copies made as copies happen (resized,
re-encoded at JPEG quality 35, cropped up to 10 %, brighter, more contrast, blurred, a burst frame); the negatives
are every other pair, including the distinct photos the model finds most alike. Indexed with the model, then the
candidate pairs (each image's nearest neighbours by vector) are scored once and the groups are formed at each
threshold. Pairwise precision and recall; and what CLIP similarity alone would give at its best threshold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dupset import make_set, precision_recall  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--flickr", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    args = ap.parse_args()

    import numpy as np

    from clipseek import duplicates as dup
    from clipseek.collection import Collection
    from clipseek.indexer import Indexer
    from clipseek.models import load_model

    work = Path(tempfile.mkdtemp(prefix="dup-bench-"))
    truth = make_set(args.flickr / "images", work / "photos", args.n, args.seed)
    encoder = load_model(args.model)
    with Collection.create(work / "coll") as coll:
        Indexer(coll, encoder).run([work / "photos"])
        field = encoder.spec.field_name
        started = time.perf_counter()
        groups = dup.find_groups(coll, field, threshold=-1.0)  # every candidate pair, with its score
        seconds = time.perf_counter() - started
        # the scores of all candidate pairs, and their CLIP cosines
        docs = {d.docid: d for d in coll.iter_documents(with_vectors=True)}
    name = {d: Path(doc.path or "").name for d, doc in docs.items()}
    pairs: dict[tuple[str, str], tuple[float, float]] = {}
    pics = {d: dup.load_picture(doc) for d, doc in docs.items()}
    with Collection.open(work / "coll", readonly=True) as coll:
        for d, doc in docs.items():
            for hit in coll.search(doc.vectors[field], field=field, hits=dup.NEIGHBOURS + 1).hits:
                if hit.docid == d:
                    continue
                key = (min(d, hit.docid), max(d, hit.docid))
                if key not in pairs:
                    a, b = docs[key[0]].vectors[field], docs[key[1]].vectors[field]
                    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                    pairs[key] = (dup.pixel_score(pics[key[0]], pics[key[1]]), cos)
    del groups

    def grouped(threshold: float, which: int) -> list[list[str]]:
        union = dup._Union()
        for (a, b), scores in pairs.items():
            if scores[which] >= threshold:
                union.join(a, b)
        members: dict[str, list[str]] = {}
        for d in {x for p in pairs for x in p}:
            members.setdefault(union.find(d), []).append(name[d])
        return [m for m in members.values() if len(m) > 1]

    n_true = precision_recall([], truth)[3]
    print(f"{len(truth)} files from {args.n} photos, {n_true} duplicate pairs; {len(pairs)} candidate pairs; "
          f"model {args.model}; grouping took {seconds:.1f} s")
    print("\n| signal | threshold | precision | recall | pairs found |\n|---|---:|---:|---:|---:|")
    for t in (0.80, 0.85, 0.88, 0.90, 0.92, 0.95):
        p, r, found, _ = precision_recall(grouped(t, 0), truth)
        mark = " (default)" if t == dup.DEFAULT_THRESHOLD else ""
        print(f"| pixels (clipseek) | {t:.2f}{mark} | {p:.3f} | {r:.3f} | {found} |")
    best = max((precision_recall(grouped(t, 1), truth)[:2] + (t,) for t in np.arange(0.80, 1.0, 0.005)),
               key=lambda x: (x[0] >= 0.95, x[1]))
    print(f"| CLIP cosine alone, best threshold with precision ≥ 0.95 if any | {best[2]:.3f} | {best[0]:.3f} | "
          f"{best[1]:.3f} | |")


if __name__ == "__main__":
    main()
