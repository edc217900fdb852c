"""`clipseek serve` under load: text queries over HTTP against a 200k-document collection, 1 and 16 clients.

    .venv/bin/python bench/serve.py [--n 200000] [--seconds 30] [--runtime auto onnxruntime:fp32 onnxruntime:int8]
                                    [--clients 1 16]

ViT-B/32 architecture at random init encodes the text (the server's own tokenizer and ONNX tower); the image
vectors are random, clustered. Each request is `GET /search/?input=<a Flickr8k caption>&hits=10`, the sample app's
query, end to end: HTTP, tokenizing, encoding, HNSW search, re-scoring, summaries, JSON.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import dataset  # noqa: E402
from clipseek.collection import Collection, Document  # noqa: E402
from clipseek.models import get_spec  # noqa: E402
from clipseek.models.loader import export_model, model_cache_dir  # noqa: E402

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "captions.txt"


def build(n: int, work: Path) -> tuple[Path, Path]:
    spec = get_spec("ViT-B/32")
    cache = work / "cache"
    torch.manual_seed(0)
    export_model(open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True), spec,
                 model_cache_dir(spec, cache))
    data, _ = dataset(n, 1)
    coll_dir = work / "c"
    with Collection.create(coll_dir, exact_threshold=0) as coll:
        coll.add_field(spec.field_name, spec.name, spec.embed_dim)
        for i in range(0, n, 10_000):
            coll.feed([Document(f"img{j}", image_file_name=f"img{j}.jpg", path=f"/photos/img{j}.jpg",
                                vectors={spec.field_name: data[j]}) for j in range(i, min(i + 10_000, n))])
        coll.search(data[0], field=spec.field_name)  # build the graph; close() snapshots it
    return coll_dir, cache


def load(port: int, queries: list[str], clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        while time.perf_counter() < stop:
            path = "/search/?" + urllib.parse.urlencode({"queryProfile": "vit_b_32", "input": rng.choice(queries),
                                                          "hits": 10})
            start = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - start)
            if resp.status != 200:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--runtime", nargs="+", default=["auto", "onnxruntime:fp32", "onnxruntime:int8"],
                    help="BACKEND:PRECISION for the server's text encoder, or auto (what `clipseek serve` picks)")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 16])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    coll_dir, cache = build(args.n, work)
    print(f"built {args.n} documents + HNSW in {time.perf_counter() - t:.0f} s")
    queries = [line.split("\t", 1)[1] for line in CAPTIONS.read_text(encoding="utf-8").splitlines()[:5000]]
    print(f"{'runtime':<18} {'clients':>7} {'p50 ms':>7} {'p99 ms':>7} {'QPS':>7} {'errors':>6}")
    for runtime in args.runtime:
        backend, _, precision = runtime.partition(":") if runtime != "auto" else ("auto", "", "auto")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, CLIPSEEK_CACHE=str(cache), CLIPSEEK_HOME=str(work / "home"))
        server = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "clipseek.cli", "serve",
                                   "--collection", str(coll_dir),
                                   "--port", str(port), "--backend", backend, "--precision", precision], env=env,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    conn.request("GET", "/search/?queryProfile=vit_b_32&input=warm+up")  # also loads the encoder
                    conn.getresponse().read()
                    break
                except OSError:
                    time.sleep(0.2)
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}")
            for clients in args.clients:
                lat, errors = load(port, queries, clients, args.seconds)
                lat.sort()
                print(f"{runtime:<18} {clients:>7} {statistics.median(lat) * 1000:7.2f} "
                      f"{lat[int(len(lat) * 0.99)] * 1000:7.2f} {len(lat) / args.seconds:7.1f} {errors:>6}")
        finally:
            server.terminate()
            server.wait(10)



if __name__ == "__main__":
    main()
