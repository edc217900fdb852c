"""Embedding at scale: image files or URLs → Parquet shards of vectors, in this process or on a Ray cluster.

``clipseek embed`` lists its sources once (folders, globs, text or Parquet lists of paths and URLs, object-store
prefixes), leaves out every item that a complete shard in the output folder already holds, and cuts the rest, in
listing order, into shards of ``shard_size`` items. Each item is read, hashed, decoded and preprocessed with the
functions ``clipseek index`` uses (the same failure reasons, the same pixels), and embedded by the same ONNX
encoder; so its vector is the one the local indexer would store.

Exact-once, by construction: a shard file appears (written to a temporary name, synced, renamed) only when every
one of its items is in it — a vector, or the reason it failed — and whoever writes shards keeps the first row it
receives for an item. Hence:

- re-running the same command embeds only what no complete shard holds, and writes no item twice;
- a killed driver loses only the shards in flight; a killed Ray worker's batch is retried by Ray Data, and a
  retried batch cannot add a second row for an item.

On Ray the work is a Ray Data pipeline: reading and decoding in tasks, encoding in an actor pool (one model load
per actor), rows streamed back to the driver, which writes the shards. See :mod:`clipseek.shards` for the files.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import ClipseekError, ImageError
from .indexer import display_path, read_image_file, supported_extensions, walk
from .models.spec import ModelSpec, parse_ref
from .shards import Row, ShardSet
from .transforms import DEFAULT_MAX_PIXELS, open_image, preprocess

#: Test hooks, never set them else: seconds to sleep before each encoder batch, and after each shard written, so a
#: test can kill a run part-way (the second keeps apart shards that complete together, as they do when several
#: encoder tasks end at once).
DELAY_ENV = "CLIPSEEK_EMBED_TEST_DELAY"
SHARD_DELAY_ENV = "CLIPSEEK_EMBED_TEST_SHARD_DELAY"
LIST_SUFFIXES = (".txt", ".lst", ".parquet")
_URL = re.compile(rb"^[a-zA-Z][a-zA-Z0-9+.-]*://")
RAY_INSTALL = "pip install 'clipseek[ray]'"
DECODE_TASK_BYTES = 64 << 20


class EmbedError(ClipseekError):
    pass


@dataclass
class EmbedReport:
    """What a run did: items listed, already held by complete shards, embedded, failed (path, reason)."""

    listed: int = 0
    held: int = 0
    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    shards: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{self.embedded} embedded, {len(self.failed)} failed, {self.held} already in complete shards, "
                f"{self.shards} shards written in {self.seconds:.1f}s")
        return ("interrupted: " + text) if self.interrupted else text


def is_url(raw: bytes | str) -> bool:
    return bool(_URL.match(raw.encode() if isinstance(raw, str) else raw))


# ---------------------------------------------------------------------------------------------------- sources


def list_sources(sources: Sequence[str], *, extensions: set[str] | None = None,
                 skip: Iterable[Path] = ()) -> list[bytes]:
    """Every image a source names, as path bytes (a local file's absolute path, or a URL), each once, in order.

    A source is a folder (walked as ``clipseek index`` walks it), a glob (``**`` recurses), a ``.txt``/``.lst``
    file with one path or URL a line (relative paths are relative to the list's folder; ``#`` comments), a
    ``.parquet`` file with a ``path`` (or ``url``) column, a single image, or a URL: ``file://``, ``s3://``,
    ``gs://`` and every file system pyarrow opens (a prefix is listed recursively), or ``http(s)://`` to one
    image."""
    exts = extensions or supported_extensions()
    out: dict[bytes, None] = {}
    for source in sources:
        for raw in _one_source(source, exts, list(skip)):
            out.setdefault(raw, None)
    return list(out)


def _has_ext(name: bytes | str, exts: set[str]) -> bool:
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    return os.path.splitext(text.split("?", 1)[0])[1].lower() in exts


def _one_source(source: str, exts: set[str], skip: list[Path]) -> Iterator[bytes]:
    if is_url(source):
        yield from _url_source(source, exts)
        return
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        yield from (raw for raw, _ in walk([Path(path)], skip=skip, extensions=exts))
    elif glob.has_magic(source):
        matches = sorted(glob.glob(os.fsencode(path), recursive=True))
        yield from (m for m in matches if os.path.isfile(m) and _has_ext(m, exts))
    elif not os.path.exists(path):
        raise EmbedError(f"{source}: no such file, folder or glob match")
    elif path.lower().endswith(LIST_SUFFIXES):
        with open(path, "rb") as fh:
            data = fh.read()
        yield from _list_entries(source, data, os.path.dirname(path))
    elif _has_ext(path, exts):
        yield os.fsencode(path)
    else:
        raise EmbedError(f"{source}: not an image clipseek reads, a folder, or a list (.txt, .lst, .parquet)")


def _list_entries(name: str, data: bytes, base: str | None) -> Iterator[bytes]:
    """Entries of a list file: lines of a text file, or the ``path``/``url`` column of a Parquet file."""
    if name.lower().endswith(".parquet"):
        from .shards import require_pyarrow

        require_pyarrow()
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        column = next((c for c in ("path", "url", "uri") if c in table.column_names), None)
        if column is None:
            raise EmbedError(f"{name}: a Parquet list needs a 'path' or 'url' column (it has "
                             f"{', '.join(table.column_names) or 'none'})")
        values = table.column(column).to_pylist()
        lines = [v.encode() if isinstance(v, str) else v for v in values if v]
    else:
        lines = [line.strip() for line in data.splitlines()]
        lines = [line for line in lines if line and not line.startswith(b"#")]
    for entry in lines:
        if is_url(entry) or base is None:
            yield entry
        else:
            yield os.fsencode(os.path.abspath(os.path.join(os.fsencode(base), os.path.expanduser(entry))))


def _url_source(url: str, exts: set[str]) -> Iterator[bytes]:
    if url.lower().startswith(("http://", "https://")):
        if url.lower().split("?", 1)[0].endswith(LIST_SUFFIXES):
            yield from _list_entries(url, _http_get(url), None)
        else:
            yield url.encode()
        return
    fs, where = _filesystem(url)
    import pyarrow.fs as pafs

    info = fs.get_file_info(where)
    if info.type == pafs.FileType.NotFound:
        raise EmbedError(f"{url}: not found")
    if info.type == pafs.FileType.Directory:
        listed = fs.get_file_info(pafs.FileSelector(where, recursive=True))
        names = sorted(i.path for i in listed if i.type == pafs.FileType.File and _has_ext(i.path, exts)
                       and not any(part.startswith(".") for part in i.path[len(where):].split("/")))
        scheme = url.split("://", 1)[0]
        yield from (f"{scheme}://{urllib.parse.quote(name)}".encode() for name in names)
    elif url.lower().endswith(LIST_SUFFIXES):
        with fs.open_input_stream(where) as fh:
            yield from _list_entries(url, fh.read(), None)
    else:
        yield url.encode()


def _filesystem(url: str) -> tuple[Any, str]:
    """(file system, path) for a URL; the file system is made once per scheme and authority (an S3 bucket's
    region is looked up when it is made), not once per image."""
    scheme, _, rest = url.partition("://")
    authority, _, key = rest.partition("/")
    key, _, query = key.partition("?")
    fs, base = _store(f"{scheme}://{authority}/" + (f"?{query}" if query else ""))
    return fs, (f"{base.rstrip('/')}/{urllib.parse.unquote(key)}" if key else base)


@lru_cache(maxsize=32)
def _store(root: str) -> tuple[Any, str]:
    from .shards import require_pyarrow

    require_pyarrow()
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(root)  # type: ignore[no-any-return]
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise EmbedError(f"{root}: pyarrow cannot open it ({exc})") from exc


def _http_get(url: str, timeout: float = 60) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def read_item(raw: bytes) -> tuple[bytes | None, int | None, float | None, str | None]:
    """(data, mtime_ns, mtime, None) for a path or URL, or (None, None, None, why it could not be read)."""
    if not is_url(raw):
        data, error = read_image_file(raw)
        if data is None:
            return None, None, None, error
        try:
            st = os.stat(raw)
        except OSError:
            return None, None, None, "vanished before it could be read"
        return data, st.st_mtime_ns, st.st_mtime, None
    url = raw.decode("utf-8", "replace")
    try:
        if url.lower().startswith(("http://", "https://")):
            data = _http_get(url)
        else:
            fs, where = _filesystem(url)
            with fs.open_input_stream(where) as fh:
                data = fh.read()
    except Exception as exc:  # network and object-store errors come in many types: each is one failed item
        return None, None, None, f"cannot read: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
    if not data:
        return None, None, None, "empty file (0 bytes)"
    return data, None, None, None


# ----------------------------------------------------------------------------------------------- one item


@dataclass(frozen=True)
class Preprocess:
    """What :meth:`Encoder.load` and :meth:`Encoder.preprocess_image` do, without the model (for decode tasks)."""

    spec: ModelSpec
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True

    @classmethod
    def of(cls, encoder: Any) -> Preprocess:
        return cls(encoder.spec, encoder.max_pixels, encoder.draft)

    def __call__(self, data: bytes, name: str) -> tuple[np.ndarray, Any]:
        spec = self.spec
        img, info = open_image(io.BytesIO(data), max_pixels=self.max_pixels,
                               draft_size=spec.image_size if self.draft else None, name=name)
        return preprocess(img, spec.image_size, spec.mean, spec.std, spec.interpolation), info


def prepare(raw: bytes, pre: Preprocess) -> tuple[Row, np.ndarray | None]:
    """Read, hash and decode one item: its row (``error`` set when it cannot be used) and its pixels."""
    row = Row(path=display_path(raw), path_bytes=raw)
    data, row.mtime_ns, row.mtime, row.error = read_item(raw)
    if data is None:
        return row, None
    row.content_hash = hashlib.sha256(data).hexdigest()
    row.size = len(data)
    try:
        pixels, info = pre(data, row.path)
    except ImageError as exc:
        row.error = exc.reason
        return row, None
    row.width, row.height, row.format = info.width, info.height, info.format
    return row, pixels


def _test_delay(hook: str = DELAY_ENV) -> None:
    delay = float(os.environ.get(hook) or 0)
    if delay:
        time.sleep(delay)


# ------------------------------------------------------------------------------------------------- the run


def plan(shards: ShardSet, items: Sequence[bytes], shard_size: int) -> dict[int, list[bytes]]:
    """The shards still to write: the items no complete shard holds, in order, numbered after the last one."""
    held = shards.held_items()
    todo = [raw for raw in items if raw not in held]
    first = shards.next_number()
    return {first + i: todo[k: k + shard_size] for i, k in enumerate(range(0, len(todo), shard_size))}


def embed(sources: Sequence[str], out: Path, *, model: str, shard_size: int = 1000, batch_size: int = 32,
          workers: int | None = None, threads: int | None = None, ray: str | None = None,
          runtime: Mapping[str, str | None] | None = None, progress: Callable[[int, int], None] | None = None,
          say: Callable[[str], None] | None = None, ray_stats: bool = False) -> EmbedReport:
    """Embed every image ``sources`` name into Parquet shards under ``out`` (see the module's docstring).

    ``ray`` None runs in this process (decoding threads, one encoder); ``"local"`` starts a Ray cluster on this
    machine; anything else is a Ray address (``ray://host:10001``, ``host:6379``, ``auto``). ``ray_stats``
    passes Ray Data's per-stage statistics (decode tasks vs encoder actors) to ``say`` at the end."""
    from .models.loader import resolve
    from .models.modeldir import read_model_dir_spec
    from .shards import require_pyarrow

    started = time.perf_counter()
    say = say or (lambda _msg: None)
    runtime = dict(runtime or {})
    if ray is not None:
        _require_ray()
    require_pyarrow()
    items = list_sources(sources, skip=[out])  # first: a wrong source costs no model download
    folder = resolve(model)
    spec = read_model_dir_spec(folder)
    ref = parse_ref(model).canonical if parse_ref(model).folder is not None else spec.name
    shards = ShardSet.open(out, model=ref, image_model=spec.image_model or ref, field=spec.field_name,
                           dim=spec.embed_dim, create=True)
    lock = shards.lock()
    try:
        return _embed(shards, items, out, ref=ref, spec=spec, shard_size=shard_size, batch_size=batch_size,
                      workers=workers, threads=threads, ray=ray, runtime=runtime, progress=progress, say=say,
                      ray_stats=ray_stats, started=started)
    finally:
        os.close(lock)


def _embed(shards: ShardSet, items: list[bytes], out: Path, *, ref: str, spec: ModelSpec, shard_size: int,
           batch_size: int, workers: int | None, threads: int | None, ray: str | None, runtime: dict[str, Any],
           progress: Callable[[int, int], None] | None, say: Callable[[str], None], ray_stats: bool,
           started: float) -> EmbedReport:
    from .models import load_model

    report = EmbedReport(listed=len(items))
    todo = plan(shards, items, shard_size)
    report.held = report.listed - sum(len(v) for v in todo.values())
    total = sum(len(v) for v in todo.values())
    say(f"{report.listed} images listed, {report.held} already in {out}, {total} to embed "
        f"in {len(todo)} shards of up to {shard_size}")
    update = progress or (lambda done, total: None)
    update(0, total)
    try:
        if not todo:
            pass
        elif ray is None:
            encoder = load_model(ref, threads=threads, batch_size=batch_size, **runtime)
            say(f"{encoder.name} on {encoder.describe()}")
            _run_here(todo, shards, encoder, workers or max(2, os.cpu_count() or 2), batch_size, update, report)
        else:
            _run_ray(todo, shards, ray, ref, Preprocess(spec), batch_size=batch_size, workers=workers or 1,
                     threads=threads, runtime=runtime, update=update, report=report, say=say, stats=ray_stats)
    except KeyboardInterrupt:
        report.interrupted = True
    report.seconds = time.perf_counter() - started
    return report


class _Collector:
    """Rows back from the encoders → complete shards. Keeps the first row of each item (a retried batch's
    repeat is dropped) and writes a shard the moment its last item arrives."""

    def __init__(self, todo: dict[int, list[bytes]], shards: ShardSet, report: EmbedReport,
                 update: Callable[[int, int], None]) -> None:
        self.expected = {number: len(items) for number, items in todo.items()}
        self.total = sum(self.expected.values())
        self.rows: dict[int, dict[int, tuple[Row, np.ndarray | None]]] = {}
        self.shards, self.report, self.update = shards, report, update
        self.done = 0

    def add(self, number: int, index: int, row: Row, vector: np.ndarray | None) -> None:
        if number not in self.expected:  # written already: a late repeat
            return
        rows = self.rows.setdefault(number, {})
        if index in rows:
            return
        rows[index] = (row, vector)
        self.done += 1
        if len(rows) == self.expected[number]:
            ordered = [rows[i] for i in range(len(rows))]
            self.shards.write(number, [r for r, _ in ordered], [v for _, v in ordered])
            del self.rows[number], self.expected[number]
            self.report.shards += 1
            for r, _vector in ordered:
                if r.error:
                    self.report.failed.append((r.path, r.error))
                else:
                    self.report.embedded += 1
            _test_delay(SHARD_DELAY_ENV)
        self.update(self.done, self.total)

    def check_complete(self) -> None:
        if self.expected:
            missing = sum(n - len(self.rows.get(s, {})) for s, n in self.expected.items())
            raise EmbedError(f"the run ended with {missing} items never returned (shards "
                             f"{', '.join(map(str, sorted(self.expected)))} not written): re-run to complete them")


def _run_here(todo: dict[int, list[bytes]], shards: ShardSet, encoder: Any, workers: int, batch_size: int,
              update: Callable[[int, int], None], report: EmbedReport) -> None:
    """Decode in ``workers`` threads ahead of one encoder; batches cross shard boundaries."""
    collector = _Collector(todo, shards, report, update)
    pre = Preprocess.of(encoder)
    flat = ((number, i, raw) for number, items in todo.items() for i, raw in enumerate(items))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[tuple[int, int, Future[tuple[Row, np.ndarray | None]]]] = deque()

        def fill() -> None:
            for number, i, raw in flat:
                pending.append((number, i, pool.submit(prepare, raw, pre)))
                if len(pending) >= batch_size * 3:
                    break

        fill()
        while pending:
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            fill()
            prepared = [(number, i, *f.result()) for number, i, f in batch]
            good = [(p[0], p[1], p[3]) for p in prepared if p[3] is not None]
            vectors: dict[tuple[int, int], np.ndarray] = {}
            if good:
                _test_delay()
                out = encoder.embed_pixels(np.stack([px for _, _, px in good]))
                vectors = {(number, i): v for (number, i, _), v in zip(good, out)}
            for number, i, row, _ in prepared:
                collector.add(number, i, row, vectors.get((number, i)))
    collector.check_complete()


# ----------------------------------------------------------------------------------------------------- Ray


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EmbedError(f"--ray needs Ray Data, which is not installed: {RAY_INSTALL} "
                         "(or leave --ray out to embed in this process)") from exc


def decode_batch(batch: dict[str, np.ndarray], pre: Preprocess) -> dict[str, np.ndarray]:
    """A Ray Data task: ``shard``, ``index``, ``path_bytes`` → the rows' fields and pixels (zeros when failed)."""
    size = pre.spec.image_size
    rows, pixels = [], np.zeros((len(batch["path_bytes"]), 3, size, size), np.float32)
    for k, raw in enumerate(batch["path_bytes"]):
        row, px = prepare(bytes(raw), pre)
        rows.append(row)
        if px is not None:
            pixels[k] = px
    out = Row.columns(rows)
    out.update(shard=np.asarray(batch["shard"]), index=np.asarray(batch["index"]), pixels=pixels)
    return out


class EncodeActor:
    """A Ray Data actor: loads the model once, embeds each batch's usable pixels (failed rows keep zeros)."""

    def __init__(self, model: str, threads: int | None, runtime: dict[str, str | None], batch_size: int) -> None:
        from .models import load_model

        self.encoder = load_model(model, threads=threads, batch_size=batch_size, **runtime)  # type: ignore[arg-type]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        ok = np.array([e is None or e == "" for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(pixels), self.encoder.dim), np.float32)
        if ok.any():
            _test_delay()
            vectors[ok] = self.encoder.embed_pixels(pixels[ok])
        batch["vector"] = vectors
        return batch


def _run_ray(todo: dict[int, list[bytes]], shards: ShardSet, address: str, model: str, pre: Preprocess, *,
             batch_size: int, workers: int, threads: int | None, runtime: dict[str, str | None],
             update: Callable[[int, int], None], report: EmbedReport, say: Callable[[str], None],
             stats: bool = False) -> None:
    import ray
    import ray.data
    import ray.exceptions

    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    # Ray Data retries a failed task, and restarts a dead actor and retries its batch, by default (max_retries,
    # max_restarts and max_task_retries -1): what a killed worker needs; the collector drops any repeat.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    say(f"Ray cluster: {cpus} CPUs, {workers} encoder actor(s)")
    rows = [{"shard": number, "index": i, "path_bytes": raw}
            for number, items in todo.items() for i, raw in enumerate(items)]
    # A decode task per ~64 MB of pixels (1,024 tiny images, ~100 at 224 px): a task per encoder batch spends
    # more on scheduling than on decoding when the model is small (bench/README.md, "Embedding at scale"); but
    # at least 4 tasks a CPU, so a small run still streams (an actor returns a task's rows when it ends).
    size = pre.spec.image_size
    per_task = max(batch_size, min(1024, DECODE_TASK_BYTES // (3 * size * size * 4), -(-len(rows) // (4 * cpus))))
    ds: Any = ray.data.from_items(rows, override_num_blocks=max(1, min(-(-len(rows) // per_task), 10_000)))
    # Decoding is cheap next to a CLIP tower: a decode task takes half a CPU, an actor what is left for it.
    ds = ds.map_batches(decode_batch, fn_kwargs={"pre": pre}, batch_size=per_task, batch_format="numpy",
                        num_cpus=0.5)
    actor = {"model": model, "threads": threads or max(1, cpus // workers), "runtime": runtime,
             "batch_size": batch_size}
    ds = ds.map_batches(EncodeActor, fn_constructor_kwargs=actor,
                        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=max(0.5, min(1.0, (cpus - 0.5) / workers)),
                        num_gpus=1 if runtime.get("device") == "cuda" else None)
    collector = _Collector(todo, shards, report, update)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            for k, row in enumerate(Row.from_columns(batch)):
                vector = None if row.error else np.asarray(batch["vector"][k], np.float32)
                collector.add(int(batch["shard"][k]), int(batch["index"][k]), row, vector)
    except ray.exceptions.RayError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(exc))
        raise EmbedError(f"the Ray job failed ({why.strip()[:300]}); the {report.shards} shards written are kept: "
                         "fix the cause and re-run the same command to embed the rest") from exc
    collector.check_complete()
    if stats:
        say(ds.stats())
