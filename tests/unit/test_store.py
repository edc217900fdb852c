"""clipseek.store's vector files: a pass over every row leaves none of them in the process's memory."""

import numpy as np

from clipseek.collection import Collection, Document
from clipseek.store import VectorFile


def resident() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_scan_unmaps_what_it_read(tmp_path):
    rows = VectorFile(tmp_path / "v.f32", 512, 0)
    rows.write(0, np.random.default_rng(0).random((40_000, 512), dtype=np.float32))  # 78 MiB
    rows.commit(40_000)
    before = resident()
    with rows.scan() as mapped:
        total = float(mapped.sum(dtype=np.float64))
    assert resident() - before < 20 * 2**20
    assert total > 0
    total = float(rows.array().sum(dtype=np.float64))  # the long-lived map keeps what it touched: the control
    assert resident() - before > 60 * 2**20


def test_opening_a_collection_checks_every_row_without_keeping_them(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((40_000, 512)).astype(np.float32)
    with Collection.create(tmp_path / "c") as c:
        c.add_field("f_image", "m", 512)
        c.feed([Document(str(i), vectors={"f_image": v}) for i, v in enumerate(vectors)])
    before = resident()
    with Collection.open(tmp_path / "c", readonly=True) as reader:
        assert len(reader) == 40_000
        assert resident() - before < 30 * 2**20  # the rows are 78 MiB; their checksums were all verified
