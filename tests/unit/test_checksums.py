"""clipseek.checksums: rows checked a block at a time agree with zlib row by row, and name the damaged rows."""

import zlib

import numpy as np
import pytest

from clipseek import checksums
from clipseek.store import VectorFile


@pytest.mark.parametrize("n, dim", [(1, 3), (255, 5), (256, 512), (257, 512), (1000, 768), (3 * 256 + 17, 2)])
def test_a_blocks_crc_follows_from_its_rows_crcs_as_zlib_computes_it(n, dim):
    rows = np.random.default_rng(n).standard_normal((n, dim)).astype("<f4")
    per_row = np.array([zlib.crc32(r.tobytes()) for r in rows], dtype="<u4")
    assert np.array_equal(checksums.row_crcs(rows), per_row)
    blocks = [zlib.crc32(rows[i: i + checksums.BLOCK_ROWS].tobytes()) for i in range(0, n, checksums.BLOCK_ROWS)]
    assert checksums.combine(per_row, dim * 4).tolist() == blocks


def test_bad_rows_names_each_damaged_row_in_any_block_and_visits_every_row_once():
    n, dim = 3 * checksums.BLOCK_ROWS + 40, 64
    rows = np.random.default_rng(7).standard_normal((n, dim)).astype("<f4")
    stored = checksums.row_crcs(rows)
    seen = np.zeros(n, int)

    def visit(a, b):
        seen[a:b] += 1

    assert checksums.bad_rows(rows, stored, on_block=visit).tolist() == []
    assert (seen == 1).all()
    damaged = [0, checksums.BLOCK_ROWS - 1, checksums.BLOCK_ROWS + 3, n - 1]
    garbled = rows.copy()
    for i in damaged:
        garbled.view(np.uint8)[i, (i * 7) % (dim * 4)] ^= 0x10  # one bit of one byte
    assert checksums.bad_rows(garbled, stored).tolist() == damaged
    stored_wrong = stored.copy()
    stored_wrong[5] ^= 1  # a damaged checksum is found the same way
    assert checksums.bad_rows(rows, stored_wrong).tolist() == [5]


def test_verify_gives_the_norms_of_every_row_and_the_damaged_slots(tmp_path):
    vectors = np.random.default_rng(3).standard_normal((700, 32)).astype(np.float32)
    f = VectorFile(tmp_path / "v.f32", 32, 0)
    f.write(0, vectors)
    f.commit(700)
    with open(f.path, "r+b") as fh:
        fh.seek(600 * 32 * 4 + 12)
        fh.write(b"\x00\x00\xc0\x7f")  # a NaN in row 600
    norms, bad, covered = f.verify(100)
    assert bad.tolist() == [600] and covered == 600
    assert np.allclose(np.delete(norms, 500), np.delete(np.linalg.norm(vectors[100:], axis=1), 500))


@pytest.mark.parametrize("size", [0, 1, 16 * 1024 * 1024 + 3])
def test_a_files_crc_is_zlibs_over_its_bytes_across_the_read_blocks(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert checksums.file_crc32(tmp_path / "f") == zlib.crc32(data)
