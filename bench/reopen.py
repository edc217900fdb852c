"""Reopen a 200k × 512 collection and answer a first query, with the integrity checks that opening now does
(a CRC-32 per vector row, norms computed from the rows, the graph snapshot's CRC-32), in fresh processes.

    python bench/reopen.py [--n 200000] [--rounds 3] [--reuse DIR] [--baseline-src SRC]

Each round runs, in a new process each, one after the other: (a) `Collection.open(readonly=True)` + one HNSW
query, as `clipseek search` and a server start do; (b) with --baseline-src, the same open and query with the
clipseek found in SRC (for example a `git worktree` of the commit before the checks) on the same files, so
the two sides alternate; (c) the checks' parts timed apart: the row checksums, the norms, the snapshot's
checksum. Page cache warm for all (every round reads the same files), which is the case of a server restart
or a second `clipseek search`. --reuse DIR opens a collection an earlier run built (its path is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPEN = """
import sys, time
import numpy as np
t = time.perf_counter()
from clipseek.collection import Collection
imported = time.perf_counter() - t
t = time.perf_counter()
c = Collection.open(sys.argv[1], readonly=True, exact_threshold=0)
opened = time.perf_counter() - t
q = np.random.default_rng(7).normal(size=512).astype(np.float32)
res = c.search(q, field="vit_b_32_image", hits=10)
total = time.perf_counter() - t
print(f"{opened:.3f} {total:.3f} {res.plan}")
"""

PARTS = """
import sys, time
import numpy as np
from pathlib import Path
from clipseek.store import VectorFile
from clipseek.checksums import file_crc32
folder = Path(sys.argv[1]); n = int(sys.argv[2])
v = VectorFile(folder / "vectors" / "vit_b_32_image.f32", 512, n)
t = time.perf_counter(); rows = v.array(); crc = v.checksums_of(rows); a = time.perf_counter() - t
t = time.perf_counter(); norms = np.linalg.norm(rows, axis=1); b = time.perf_counter() - t
(snap,) = (folder / "ann").glob("*.faiss")
t = time.perf_counter(); file_crc32(snap); c = time.perf_counter() - t
print(f"{a:.3f} {b:.3f} {c:.3f} {snap.stat().st_size / 2**20:.0f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", type=Path, help="a collection an earlier run built")
    ap.add_argument("--baseline-src", type=Path, help="a src/ folder of another clipseek to open the same files with")
    args = ap.parse_args()
    from clipseek.collection import Collection, Document

    if args.reuse:
        folder = args.reuse
        with Collection.open(folder, readonly=True) as c:
            args.n = len(c)
    else:
        folder = Path(tempfile.mkdtemp(prefix="clipseek-reopen-")) / "c"
        rng = np.random.default_rng(1)
        t = time.perf_counter()
        with Collection.create(folder, exact_threshold=0) as c:
            c.add_field("vit_b_32_image", "ViT-B/32", 512)
            for start in range(0, args.n, 10_000):
                vecs = rng.normal(size=(min(10_000, args.n - start), 512)).astype(np.float32)
                c.feed([Document(f"d{start + i}", image_file_name=f"{start + i}.jpg",
                                 vectors={"vit_b_32_image": v}) for i, v in enumerate(vecs)])
            c.search(vecs[0], field="vit_b_32_image", hits=10)  # builds the graph; close() snapshots it
        print(f"built {args.n} x 512 with its graph in {time.perf_counter() - t:.0f} s: {folder}")
    opens, totals, parts, base_opens, base_totals = [], [], [], [], []
    for _ in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", OPEN, str(folder)], capture_output=True, text=True, check=True)
        opened, total, plan = out.stdout.split()
        opens.append(float(opened))
        totals.append(float(total))
        if args.baseline_src:
            env = dict(os.environ, PYTHONPATH=str(args.baseline_src))
            out = subprocess.run([sys.executable, "-c", OPEN, str(folder)], capture_output=True, text=True,
                                 check=True, env=env)
            base_opens.append(float(out.stdout.split()[0]))
            base_totals.append(float(out.stdout.split()[1]))
        out = subprocess.run([sys.executable, "-c", PARTS, str(folder), str(args.n)], capture_output=True, text=True,
                             check=True)
        parts.append([float(x) for x in out.stdout.split()])
    print(f"plan of the first query: {plan}")
    print(f"open (read-only, with every check)   best {min(opens):.2f} s  median {statistics.median(opens):.2f} s")
    print(f"open + first query                   best {min(totals):.2f} s  median {statistics.median(totals):.2f} s")
    if base_opens:
        print(f"baseline ({args.baseline_src}): open  best {min(base_opens):.2f} s  median "
              f"{statistics.median(base_opens):.2f} s;  open + first query  best {min(base_totals):.2f} s  median "
              f"{statistics.median(base_totals):.2f} s")
    med = [statistics.median(p[i] for p in parts) for i in range(4)]
    print(f"  of which (medians, timed apart): row CRC-32s {med[0]:.2f} s, norms {med[1]:.2f} s, "
          f"snapshot CRC-32 {med[2]:.2f} s ({med[3]:.0f} MiB)")


if __name__ == "__main__":
    main()
