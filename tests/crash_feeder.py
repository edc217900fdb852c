"""Child process for test_crash: feeds deterministic batches, printing 'ack N' after each commit.

Arguments: collection path, first batch, and optionally the last batch (else it feeds until killed)."""

import sys

import numpy as np

from clipseek.collection import Collection, Document

DIM = 32


def vector_for(docid: str) -> np.ndarray:
    return np.random.RandomState(abs(hash(docid)) % (2**31)).randn(DIM).astype(np.float32)


def main() -> None:
    path, start = sys.argv[1], int(sys.argv[2])
    last = int(sys.argv[3]) if len(sys.argv) > 3 else None
    c = Collection.open(path, create=True, exact_threshold=0)
    c.add_field("tiny_image", "tiny", DIM)
    batch = start
    while last is None or batch <= last:
        docs = [Document(f"b{batch}-{i}", width=batch, vectors={"tiny_image": vector_for(f"b{batch}-{i}")})
                for i in range(20)]
        if batch % 3 == 2:  # replace some earlier documents too
            docs.append(Document(f"b{batch - 1}-0", width=batch, vectors={"tiny_image": vector_for(f"b{batch - 1}-0")}))
        c.feed(docs)
        if batch % 4 == 0:
            c.remove(f"b{batch - 2}-1")
        print(f"ack {batch}", flush=True)
        if batch % 5 == 0:
            c.checkpoint()
        batch += 1
    c.close()


if __name__ == "__main__":
    main()
