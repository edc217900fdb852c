"""Soak: 16 clients for 60 s against a real `clipseek serve` while `clipseek index` runs and the server is killed
with SIGKILL and restarted three times. Reports requests, statuses, p50/p99 per operation, documents lost
(must be 0) and the server's resident memory over time.

    python bench/soak.py [--seconds 60] [--clients 16] [--kills 3]

The clients mix `/search/` text queries (`input=`), document puts, gets and removes, and selective visits on
127.0.0.1 only. A write counts as acknowledged when it got a 200; at the end every acknowledged put whose
document was not later removed (by an acknowledged remove) must be there, and every acknowledged remove must
have stuck. A write that got no answer (the server died under it) may have landed or not: it is not counted
either way. While `clipseek index` holds the collection's write lock, the server answers writes with 503 (which
Vespa clients retry): counted as such. The index run itself is retried until it gets the lock.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

DOC = "/document/v1/default/image_search/docid/"
CLI = [sys.executable, "-m", "clipseek.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, collection: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.collection, self.port, self.env, self.log = collection, port, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*CLI, "serve", "--collection", str(self.collection), "--port",
                                          str(self.port), "--model", "tiny"], env=self.env, stderr=log)
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/status.html")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                raise SystemExit(f"clipseek serve exited: see {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def rss_mib(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:  # type: ignore[union-attr]
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            return None
        return None


class Client(threading.Thread):
    def __init__(self, k: int, port: int, stop: float, captions: list[str], results: dict) -> None:
        super().__init__(daemon=True)
        self.k, self.port, self.stop_at, self.captions, self.results = k, port, stop, captions, results
        self.rng = random.Random(k)
        self.conn: http.client.HTTPConnection | None = None
        self.mine: list[str] = []  # ids this client put and believes present
        self.n = 0

    def request(self, op: str, method: str, path: str, body: bytes | None = None) -> int | None:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            resp.read()
            status: int | None = resp.status
        except (OSError, http.client.HTTPException):
            status = None
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            time.sleep(0.05)  # the server is down: do not spin
        self.results["latency"][op].append(time.perf_counter() - started)
        self.results["status"][(op, status)] += 1
        return status

    def run(self) -> None:
        acked: dict[str, str] = self.results["acked"]
        while time.time() < self.stop_at:
            roll = self.rng.random()
            if roll < 0.5:
                text = urllib.parse.quote(self.rng.choice(self.captions))
                self.request("search", "GET", f"/search/?input={text}&hits=5")
            elif roll < 0.7:
                docid = f"soak-{self.k}-{self.n}"
                self.n += 1
                vec = np.random.default_rng(self.n * 100 + self.k).normal(size=96).round(5).tolist()
                body = json.dumps({"fields": {"image_file_name": f"{docid}.jpg", "tiny_image": vec}}).encode()
                status = self.request("put", "POST", DOC + docid, body)
                if status == 200:
                    acked[docid] = "present"
                    self.mine.append(docid)
                elif status is None:
                    acked[docid] = "unknown"
            elif roll < 0.8 and self.mine:
                docid = self.mine.pop(self.rng.randrange(len(self.mine)))
                status = self.request("remove", "DELETE", DOC + docid)
                if status == 200:
                    acked[docid] = "absent"
                elif status is None:
                    acked[docid] = "unknown"
                else:
                    self.mine.append(docid)
            elif roll < 0.9:
                sel = urllib.parse.quote(f'image_search.image_file_name = "soak-{self.k}-*"')
                self.request("visit", "GET", f"{DOC}?cluster=image_search&wantedDocumentCount=20&selection={sel}")
            else:
                docid = self.rng.choice(self.mine) if self.mine else "nothing"
                self.request("get", "GET", DOC + docid)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--images", type=int, default=600, help="images `clipseek index` adds during the run")
    args = ap.parse_args()

    from clipseek import synth

    base = Path(tempfile.mkdtemp(prefix="clipseek-soak-"))
    env = dict(os.environ, CLIPSEEK_HOME=str(base / "home"), CLIPSEEK_CACHE=str(base / "cache"))
    first = synth.write_dataset(base / "g1", 100, seed=1)
    second = synth.write_dataset(base / "g2", args.images, seed=2)
    captions = [line.split("\t", 1)[1] for line in (first / "captions.txt").read_text().splitlines()]
    collection = base / "c"
    subprocess.run([*CLI, "index", str(first / "images"), "--collection", str(collection), "--model", "tiny"],
                   check=True, env=env, capture_output=True)
    server = Server(collection, free_port(), env, base / "serve.log")
    restarts = [server.start()]
    stop = time.time() + args.seconds
    results: dict = {"latency": defaultdict(list), "status": Counter(), "acked": {}}
    clients = [Client(k, server.port, stop, captions, results) for k in range(args.clients)]
    began = time.time()
    for c in clients:
        c.start()

    index_runs: list[str] = []

    def indexer() -> None:  # retried until it gets the write lock (the server holds it while it writes)
        time.sleep(2)
        while time.time() < stop:
            proc = subprocess.run([*CLI, "index", str(second / "images"), "--collection", str(collection), "--model",
                                   "tiny", "--batch-size", "16"], env=env, capture_output=True, text=True)
            index_runs.append(f"{time.time() - began:5.1f}s rc={proc.returncode} "
                              f"{(proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1][:110]}")
            if proc.returncode == 0 and f"{args.images} indexed" in proc.stdout or "0 indexed, " in proc.stdout:
                return
            time.sleep(1)
    index_thread = threading.Thread(target=indexer, daemon=True)
    index_thread.start()

    rss: list[tuple[float, float]] = []
    kill_at = [began + args.seconds * (i + 1) / (args.kills + 1) for i in range(args.kills)]
    while time.time() < stop:
        if kill_at and time.time() >= kill_at[0]:
            kill_at.pop(0)
            server.kill()
            restarts.append(server.start())
        mem = server.rss_mib()
        if mem is not None:
            rss.append((time.time() - began, mem))
        time.sleep(0.5)
    for c in clients:
        c.join()
    index_thread.join(timeout=300)

    # verify every acknowledged write against a fresh server process
    server.kill()
    server.start()
    lost, resurrected, checked = [], [], 0
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for docid, state in results["acked"].items():
        if state == "unknown":
            continue
        conn.request("GET", DOC + docid)
        resp = conn.getresponse()
        resp.read()
        checked += 1
        if state == "present" and resp.status != 200:
            lost.append(docid)
        if state == "absent" and resp.status != 404:
            resurrected.append(docid)
    conn.request("GET", "/ApplicationStatus")
    total_docs = json.loads(conn.getresponse().read())["documents"]
    server.kill()

    print(f"clipseek soak: {args.clients} clients x {args.seconds:.0f} s, {args.kills} SIGKILLs of the server, "
          f"`clipseek index` of {args.images} images meanwhile")
    statuses = results["status"]
    print(f"requests: {sum(statuses.values())}")
    print(f"{'operation':<8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for op in ("search", "put", "get", "remove", "visit"):
        lat = results["latency"][op]
        by = {str(s): n for (o, s), n in sorted(statuses.items(), key=lambda kv: str(kv[0][1])) if o == op}
        print(f"{op:<8} {len(lat):>6} {percentile(lat, 50):>8.1f} {percentile(lat, 99):>8.1f}  {by}")
    five = sum(n for (_, s), n in statuses.items() if s is not None and s >= 500 and s != 503)
    print(f"5xx other than 503 (write lock held by clipseek index): {five}")
    unknown = sum(1 for s in results["acked"].values() if s == "unknown")
    print(f"acknowledged writes checked: {checked}; lost: {len(lost)}; removed but back: {len(resurrected)}; "
          f"unanswered (server killed under them, not counted): {unknown}")
    print(f"documents at the end: {total_docs}")
    print("server restarts (s until it answered): " + ", ".join(f"{t:.2f}" for t in restarts))
    print("clipseek index runs: ")
    for line in index_runs:
        print("  " + line)
    step = max(1, len(rss) // 12)
    print("server resident memory (MiB) over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in rss[::step]))
    if rss:
        print(f"  peak {max(m for _, m in rss):.0f} MiB")
    if lost or resurrected or five:
        sys.exit(1)


if __name__ == "__main__":
    main()
