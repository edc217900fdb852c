"""`clipseek embed` (in this process, and on a local Ray cluster) against `clipseek index`, interleaved in one run.

    .venv/bin/python bench/embed.py [--model vit|tiny] [--limit 1000] [--rounds 2]
    .venv/bin/python bench/embed.py --stages      # only the per-stage costs: decoding, and the driver's rate

The Flickr8k JPEGs (../shared/data/flickr8k/images, the first --limit). Each round runs the three on the same
files, each into a fresh output, in turn:

- index:      `Indexer` into a new collection (what `clipseek index` runs), decoding threads + one encoder;
- embed:      `clipseek embed` without Ray: the same, writing Parquet shards instead of a collection;
- embed-ray:  `clipseek embed --ray`, on a Ray cluster started once on this machine (num_cpus = the CPUs), with
              one encoder actor: decode tasks, the actor pool, rows streamed to the driver, shards written there.

Every figure is images embedded per second of the whole run (listing, Ray Data's pipeline start-up, decoding,
encoding, writing). The cluster's own start, paid once per `--ray local` command, is printed apart.
``vit``: the ViT-B/32 architecture with random weights (none can be downloaded here), exported as
`clipseek models fetch` exports; ``tiny``: the bundled model, where decoding, not the model, bounds the rate.

``--stages`` (also printed before every run): decoding + preprocessing per image on one thread (224-px Flickr8k
JPEGs, and a 4000x3000 JPEG made from one, draft-decoded), and what one driver can take on a cluster: rows as a
Ray batch brings them (512-dim vectors), made into rows, the first of each item kept, shards of 1,000 written
and synced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from clipseek import load_model
from clipseek.collection import Collection
from clipseek.embed import embed
from clipseek.indexer import Indexer, docid_for
from clipseek.shards import ShardSet

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"


def vit_model(work: Path) -> str:
    import open_clip
    import torch

    from clipseek.models import get_spec
    from clipseek.models.loader import export_model

    torch.manual_seed(0)
    spec = get_spec("ViT-B/32")
    clip = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True).eval()
    return f"local-dir:{export_model(clip, spec, work / 'vit')}"


def driver_rate(n: int = 20_000, dim: int = 512, shard: int = 1000) -> float:
    """Rows per second through the driver's collector and shard writer, with synthetic rows in batches of 32."""
    from clipseek.embed import EmbedReport, _Collector
    from clipseek.shards import Row

    todo = {s: [f"/photos/{s}/{i:05d}.jpg".encode() for i in range(shard)] for s in range(n // shard)}
    rows = [Row(path=p.decode(), path_bytes=p, content_hash="0" * 64, size=150_000, mtime=1.7e9,
                mtime_ns=1_700_000_000_000_000_000, width=224, height=224, format="JPEG")
            for items in todo.values() for p in items]
    columns = Row.columns(rows)
    columns["shard"] = np.repeat(np.arange(len(todo)), shard)
    columns["index"] = np.tile(np.arange(shard), len(todo))
    columns["vector"] = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="bench-driver-"))
    shards = ShardSet.open(work / "s", model="m", image_model="m", field="m_image", dim=dim, create=True)
    collector = _Collector(todo, shards, EmbedReport(), lambda done, total: None)
    start = time.perf_counter()
    for i in range(0, n, 32):
        batch = {k: v[i: i + 32] for k, v in columns.items()}
        for k, row in enumerate(Row.from_columns(batch)):
            collector.add(int(batch["shard"][k]), int(batch["index"][k]), row, batch["vector"][k])
    seconds = time.perf_counter() - start
    collector.check_complete()
    shutil.rmtree(work)
    return n / seconds


def decode_ms() -> tuple[float, float]:
    """Milliseconds per image to decode and preprocess for ViT-B/32 on one thread: Flickr8k, then 12 MP."""
    import io

    from PIL import Image

    from clipseek.embed import Preprocess
    from clipseek.models import get_spec

    pre = Preprocess(get_spec("ViT-B/32"))
    files = sorted(FLICKR.glob("*.jpg"))[:300]
    small = [f.read_bytes() for f in files]
    buf = io.BytesIO()
    Image.open(files[0]).convert("RGB").resize((4000, 3000)).save(buf, "JPEG", quality=90)
    big = [buf.getvalue()] * 20
    out = []
    for datas in (small, big):
        start = time.perf_counter()
        for data in datas:
            pre(data, "bench")
        out.append((time.perf_counter() - start) / len(datas) * 1e3)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["vit", "tiny"], default="vit")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--stages", action="store_true", help="only the per-stage costs (decoding, the driver)")
    args = parser.parse_args()
    small, big = decode_ms()
    print(f"decode + preprocess, one thread: {small:.1f} ms per 224-px Flickr8k JPEG, {big:.1f} ms per 4000x3000 "
          "JPEG (draft)")
    driver_rate(2000)  # imports and first writes out of the way
    print(f"driver: {driver_rate():,.0f} rows/s collected and written (512-dim, shards of 1,000)")
    if args.stages:
        return

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    model = vit_model(work) if args.model == "vit" else "tiny"
    images = work / "images"
    images.mkdir()
    for f in sorted(FLICKR.glob("*.jpg"))[: args.limit]:
        (images / f.name).symlink_to(f)
    n = len(list(images.iterdir()))

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"Ray local cluster start: {time.perf_counter() - started:.1f} s (once per `--ray local` command)")
    print(f"{args.model}, {n} Flickr8k JPEGs, {os.cpu_count()} CPUs, shards of {args.shard_size}, "
          f"{args.rounds} interleaved rounds\n")

    rates: dict[str, list[float]] = {"index": [], "embed": [], "embed-ray": []}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[int, str] = {}  # every run embeds the same images (a file that fails, fails in all three)
    for r in range(args.rounds):
        for name in rates:
            out = work / f"{name}-{r}"
            start = time.perf_counter()
            if name == "index":
                with Collection.create(out) as coll:
                    report = Indexer(coll, load_model(model)).run([images])
                    done = report.indexed + report.reused  # a duplicate file reuses its twin's vector
                    vectors[name] = {d.docid: d.vectors[next(iter(d.vectors))] for d in coll.iter_documents()}
            else:
                rep = embed([str(images)], out, model=model, shard_size=args.shard_size,
                            ray="local" if name == "embed-ray" else None)
                done = rep.embedded
                vectors[name] = {docid_for(row.path_bytes): v for row, v in ShardSet.open(out).rows()
                                 if v is not None}
            seconds = time.perf_counter() - start
            counts.setdefault(done, name)
            assert len(counts) == 1, f"{name} embedded {done} images, {counts} elsewhere"
            rates[name].append(done / seconds)
            print(f"round {r + 1}  {name:<10} {done / seconds:7.1f} img/s  ({done} in {seconds:.1f} s)", flush=True)
            shutil.rmtree(out)

    print()
    base = float(np.mean(rates["index"]))
    for name, values in rates.items():
        print(f"{name:<10} mean {np.mean(values):7.1f} img/s   {np.mean(values) / base:.2f}x index")
    cos = min(float(vectors["index"][k] @ vectors["embed-ray"][k]) for k in vectors["index"])
    print(f"min cosine, index vs embed-ray vectors of the same file: {cos:.7f}")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
