"""Run as a script: 16 threads read through a served collection's Shared while the janitor releases its idle
writer as fast as it can and a writer thread keeps re-opening it. Prints 'ok N' (N reads) or dies: closing
SQLite under a running read crashes the process (SIGSEGV) or raises 'Cannot operate on a closed database'."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

from clipseek.collection import Collection, Document
from clipseek.server.app import Shared


def main(folder: Path, seconds: float) -> None:
    rng = np.random.default_rng(5)
    with Collection.create(folder) as coll:
        coll.add_field("tiny_image", "tiny", 16)
        coll.feed([Document(f"d{i}", image_file_name=f"{i}.jpg", vectors={"tiny_image": rng.normal(size=16)})
                   for i in range(300)])
    shared = Shared(folder, idle_seconds=0.0)
    stop = time.monotonic() + seconds
    reads = [0] * 16
    errors: list[BaseException] = []

    def reader(k: int) -> None:
        try:
            while time.monotonic() < stop:
                with shared.reading() as coll:
                    for _ in range(20):
                        coll.get(f"d{(k * 20 + reads[k]) % 300}", with_vectors=False)
                    if reads[k] % 10 == 0:
                        coll.search(rng.normal(size=16), field="tiny_image", hits=5)
                reads[k] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer() -> None:
        i = 0
        while time.monotonic() < stop:
            with shared.writing() as coll:
                coll.update(f"d{i % 300}", attributes={"size": i})
            i += 1

    def janitor() -> None:
        while time.monotonic() < stop:
            shared.release_idle()

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(16)]
    threads += [threading.Thread(target=writer), threading.Thread(target=janitor)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    if errors:
        print(f"error: {errors[0]!r}")
        sys.exit(1)
    print(f"ok {sum(reads)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
