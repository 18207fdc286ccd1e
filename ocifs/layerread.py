"""Serve byte ranges of an indexed layer's tar stream, safely from many threads.

A plain tar member is read with ``os.pread``. A gzip layer is served in aligned blocks kept
in a cache shared by all layers and bounded in size (``BlockCache``): a missing block is
inflated by a cursor (gzseek) started at the seek point before it, or by the live cursor
that stopped just before it, so a file read front to back continues where the last read
stopped. Once a reader is seen to be sequential, the spans ahead of it are inflated by a
small pool of threads, each from its own seek point: zlib runs without the GIL, so they
inflate on several cores at once. A damaged region fails the read that reaches it
(``DamagedLayer``, EIO for the mount) and nothing else.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import os
import threading
from collections import OrderedDict, deque
from typing import Protocol

from .errors import CompressionError, LayerError
from .gzseek import GzipCursor, SeekPoints
from .layout import LayerRef
from .mediatypes import Compression

logger = logging.getLogger(__name__)

BLOCK = 256 << 10  # unit of the decompressed-data cache: two of the kernel's 128 KiB reads
BLOCK_CACHE_BYTES = 64 << 20
MAX_CURSORS = 4  # live inflaters per layer: sequential readers of a few files at once
# Readahead: how far ahead of a sequential reader spans are inflated (at most a quarter of
# the block cache), after how many bytes read in a row, and by how many threads per cache
# (zlib through ctypes runs without the GIL, so each can have a core).
READAHEAD_BYTES = 4 << 20
READAHEAD_TRIGGER = 2 * BLOCK
JOB_MIN = 2 * BLOCK  # shorter spans between seek points are joined to the next
MAX_STREAMS = 8  # sequential runs followed per layer
MAX_PARKED = 2  # cursors of finished readahead jobs kept per layer (each holds its input)
# A span whose compressed size is at least this fraction of its size is mostly stored
# blocks: inflating it is a copy, cheaper done by the read itself than handed to a thread
# (whose Python work per block would contend for the GIL with the FUSE requests).
STORED_RATIO = 0.9
WORKERS = max(1, min(4, os.cpu_count() or 1))
PR_SET_NAME = 15  # linux/prctl.h


class DamagedLayer(OSError):
    """A read hit data that is missing or corrupt; the FUSE adapter answers EIO."""


class LayerReader(Protocol):
    """Random access to the uncompressed tar stream of one layer; safe to call from threads."""

    def pread(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``, or DamagedLayer."""
        ...

    def close(self) -> None: ...


class TarLayerReader:
    """An uncompressed layer: the blob is the tar stream, read by offset."""

    def __init__(self, layer: LayerRef) -> None:
        self.layer = layer
        self.fd = os.open(layer.path, os.O_RDONLY | os.O_CLOEXEC)

    def pread(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
        except OSError as error:
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != size:
            raise DamagedLayer(f"{self.layer.describe()}: blob ends before offset {offset + size}")
        return data

    def close(self) -> None:
        os.close(self.fd)


class GzipLayerReader:
    """A gzip layer, read through its seek points, a few live inflaters and readahead jobs.

    The uncompressed stream is served in aligned blocks kept in the shared BlockCache. A block
    that is not cached is inflated by a cursor: the live one that stopped closest before it
    (a sequential read continues exactly where the last one stopped), or a new one started at
    the seek point before it. Blocks a cursor passes on its way are cached too: neighbouring
    files in the same stretch of the layer are read next more often than not. Inflating takes
    the reader's lock; zlib runs without the GIL, so other layers are served meanwhile.

    A run of reads that follow each other (``Stream``) gets readahead: the spans between the
    later seek points are handed to the cache's InflatePool, each inflated by a cursor of its
    own, so several spans inflate at once on separate cores while the reads go on. Every
    block being inflated is claimed in ``pending`` (its Event is set once it is cached, or
    given up), so a read waits for a block a job is producing instead of inflating it again.
    Neighbouring jobs share the block across the seek point between them (``Seam``), or the
    later one goes on with the cursor the earlier one parked: the stream inflates once.
    """

    def __init__(self, layer: LayerRef, points: SeekPoints, cache: BlockCache) -> None:
        self.layer = layer
        self.points = points
        self.cache = cache
        self.fd = os.open(layer.path, os.O_RDONLY | os.O_CLOEXEC)
        self.lock = threading.Lock()  # the foreground cursors
        self.cursors: list[GzipCursor] = []  # most recently used last
        # Readahead state; never held while inflating or waiting.
        self.state = threading.Lock()
        self.pending: dict[int, threading.Event] = {}  # block number -> set when settled
        self.streams: list[Stream] = []  # most recently extended last
        self.jobs: set[InflateJob] = set()  # queued or running
        # Cursors of finished jobs, by position: the next span's job goes on from there
        # instead of inflating the block across the seek point again.
        self.parked: OrderedDict[int, GzipCursor] = OrderedDict()
        self.jobs_started = 0  # readahead jobs handed to the pool, ever
        self.closed = False
        self.pool = cache.pool
        # Never further ahead than a fraction of the cache, or the blocks would be evicted
        # before they are read; too small a cache gets no readahead at all.
        self.ahead = min(READAHEAD_BYTES, cache.limit // 4)
        self.pool.attach()

    @property
    def size(self) -> int:
        return self.points.size

    def pread(self, offset: int, size: int) -> bytes:
        end = offset + size
        if end > self.points.size:
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {end}")
        if size <= 0:
            return b""
        stream = self._follow(offset, end)
        first, last = offset // BLOCK, (end - 1) // BLOCK
        if first == last:  # most reads: no list, no join
            if stream is not None:
                self._read_ahead(stream, first * BLOCK)
            start = first * BLOCK
            return self.block(first)[offset - start : end - start]
        # Views, not slices: the join is the only copy.
        pieces = []
        for number in range(first, last + 1):
            start = number * BLOCK
            if stream is not None:
                self._read_ahead(stream, start)
            pieces.append(memoryview(self.block(number))[max(offset, start) - start : end - start])
        return b"".join(pieces)

    def block(self, number: int) -> bytes:
        key = (self.layer.position, number)
        data = self.cache.get(key)
        if data is not None:
            return data
        while True:
            with self.state:
                event = self.pending.get(number)
                if event is None:
                    # Checked again under the lock: a job caches a block before it settles it.
                    data = self.cache.get(key)
                    if data is not None:
                        return data
                    claim = self.pending[number] = threading.Event()
                    break
            event.wait()  # another read or a job is inflating it: one inflate per block
            data = self.cache.get(key)
            if data is not None:
                return data
            # The job gave up (a damaged region, closing) or the block was evicted already.
        try:
            with self.lock:
                return self._inflate_block(number)
        finally:
            with self.state:
                del self.pending[number]
            claim.set()

    def _inflate_block(self, number: int) -> bytes:
        start = number * BLOCK
        length = min(BLOCK, self.points.size - start)
        try:
            cursor = self._cursor_before(start)
        except (CompressionError, OSError) as error:  # a damaged window, an unreadable blob
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        try:
            while cursor.position < start:
                if cursor.position % BLOCK:
                    ahead = min(start, (cursor.position // BLOCK + 1) * BLOCK) - cursor.position
                    cursor.skip(ahead)
                else:
                    passed = cursor.position // BLOCK
                    self.cache.put((self.layer.position, passed), cursor.read(BLOCK))
            data = cursor.read(length)
        except (CompressionError, OSError) as error:
            self._drop(cursor)
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != length:
            self._drop(cursor)
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {start + length}")
        self.cache.put((self.layer.position, number), data)
        return data

    def _cursor_before(self, offset: int) -> GzipCursor:
        """The cursor that reaches ``offset`` with the least inflating."""
        point = self.points.find(offset)
        best: GzipCursor | None = None
        for cursor in self.cursors:
            if cursor.position <= offset and (best is None or cursor.position > best.position):
                best = cursor
        with self.state:  # or one a readahead job left where the reads take over
            for position, cursor in self.parked.items():
                usable = self.points.uncompressed[point] <= position <= offset
                if usable and (best is None or position > best.position):
                    best = cursor
            if best is not None and self.parked.get(best.position) is best:
                del self.parked[best.position]
                if len(self.cursors) >= MAX_CURSORS:
                    self.cursors.pop(0).close()
                self.cursors.append(best)
        if best is None or best.position < self.points.uncompressed[point]:
            best = GzipCursor(self.fd, self.points, point)
            if len(self.cursors) >= MAX_CURSORS:
                self.cursors.pop(0).close()
        else:
            self.cursors.remove(best)
        self.cursors.append(best)
        return best

    def _drop(self, cursor: GzipCursor) -> None:
        cursor.close()
        if cursor in self.cursors:
            self.cursors.remove(cursor)

    # Readahead.

    def _follow(self, offset: int, end: int) -> Stream | None:
        """The stream this read continues (or starts), if it has been sequential long enough
        to be worth reading ahead of. Reads in flight together may arrive a little out of
        order, hence the slack behind the stream's end."""
        if self.ahead < JOB_MIN:
            return None
        with self.state:
            for stream in reversed(self.streams):
                if stream.end - 2 * BLOCK <= offset <= stream.end + BLOCK:
                    self.streams.remove(stream)
                    stream.end = max(stream.end, end)
                    stream.run += end - offset
                    break
            else:
                stream = Stream(end, end - offset)
                if len(self.streams) >= MAX_STREAMS:
                    self.streams.pop(0)
            self.streams.append(stream)
            return stream if stream.run >= READAHEAD_TRIGGER else None

    def _read_ahead(self, stream: Stream, position: int) -> None:
        """Hand the spans between the seek points after ``position`` to the pool, up to
        ``self.ahead`` bytes ahead; each job caches the blocks that start in its span."""
        horizon = position + self.ahead
        if stream.scheduled >= horizon:  # the usual case, without taking the lock
            return
        points, size = self.points.uncompressed, self.points.size
        compressed = self.points.compressed
        with self.state:
            if self.closed:
                return
            index = bisect.bisect_left(points, max(stream.scheduled, position + 1))
            while index < len(points):
                span_start = points[index]
                after = index + 1
                while after < len(points) and points[after] - span_start < JOB_MIN:
                    after += 1
                span_end = points[after] if after < len(points) else size
                if span_end > horizon:
                    return
                blob_end = compressed[after] if after < len(points) else self.points.compressed_size
                if blob_end - compressed[index] >= STORED_RATIO * (span_end - span_start):
                    stream.scheduled = span_end  # left to the reads
                    index = after
                    continue
                if not self.pool.reserve(span_end - span_start):
                    return
                job = self._claim(index, span_start, span_end, stream.last_job)
                if job is None:
                    self.pool.release(span_end - span_start)
                else:
                    stream.last_job = job
                    self.jobs.add(job)
                    self.jobs_started += 1
                    if not self.pool.submit(job):
                        self._finish(job)
                        return
                stream.scheduled = span_end
                index = after

    def _claim(
        self, index: int, start: int, end: int, before: InflateJob | None
    ) -> InflateJob | None:
        """A job for the blocks that start in [start, end) and are neither cached nor
        claimed; None when there are none. Called under ``self.state``."""
        claims: dict[int, threading.Event] = {}
        for number in range(-(-start // BLOCK), -(-end // BLOCK)):
            if number not in self.pending and not self.cache.contains(
                (self.layer.position, number)
            ):
                claims[number] = self.pending[number] = threading.Event()
        if not claims:
            return None
        job = InflateJob(self, index, start, end, claims)
        # The block across ``start`` is claimed by the job before, which inflates up to
        # ``start``; this one inflates the rest on its way to its first block. A seam lets
        # them share the parts instead of both inflating the rest.
        seam_block = start // BLOCK
        if (
            start % BLOCK
            and before is not None
            and before.end == start
            and seam_block in before.claims
            and before in self.jobs
            and before.seam_after is None
        ):
            before.seam_after = job.seam_before = Seam()
            before.seam_after_job = job
        return job

    def _deliver(self, job: InflateJob, number: int, data: bytes) -> None:
        self.cache.put((self.layer.position, number), data)
        with self.state:
            event = job.claims.pop(number)
            if self.pending.get(number) is event:
                del self.pending[number]
        event.set()

    def _park(self, cursor: GzipCursor) -> bool:
        with self.state:
            if self.closed or cursor.position >= self.points.size:
                return False
            old = self.parked.pop(cursor.position, None)
            if old is not None:
                old.close()
            self.parked[cursor.position] = cursor
            if len(self.parked) > MAX_PARKED:  # a stream that stopped: its reader went away
                self.parked.popitem(last=False)[1].close()
            return True

    def _finish(self, job: InflateJob) -> None:
        """Settle what the job leaves undone (waiting reads inflate it themselves). Called
        under ``self.state``."""
        if job not in self.jobs:
            return
        self.jobs.discard(job)
        job.started = True  # a queued job is not run any more
        for number, event in job.claims.items():
            if self.pending.get(number) is event:
                del self.pending[number]
            event.set()
        job.claims.clear()
        # A part this job left at a seam stays for the job on the other side; else that
        # job is told to inflate the whole block itself.
        if job.seam_before is not None and job.seam_before.tail is None:
            job.seam_before.close()
        if job.seam_after is not None and job.seam_after.head is None:
            job.seam_after.close()
        self.pool.release(job.end - job.start)
        job.finished.set()

    def close(self) -> None:
        with self.state:
            if self.closed:
                return
            self.closed = True
            jobs = list(self.jobs)
            for job in jobs:
                job.stopped = True
                if not job.started:
                    self._finish(job)
        # Running jobs stop at their next block; they use the fd, so it stays open until then.
        for job in jobs:
            job.finished.wait()
        with self.state:
            for cursor in self.parked.values():
                cursor.close()
            self.parked.clear()
        with self.lock:
            for cursor in self.cursors:
                cursor.close()
            self.cursors.clear()
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        self.pool.detach()


class Stream:
    """A run of reads of one reader that follow each other."""

    __slots__ = ("end", "last_job", "run", "scheduled")

    def __init__(self, end: int, run: int) -> None:
        self.end = end  # where the last read ended
        self.run = run  # bytes read in the run so far
        self.scheduled = 0  # readahead was handed out up to here
        self.last_job: InflateJob | None = None


class Seam:
    """The block across the seek point where one job's span ends and the next one's begins.

    Each of the two inflates its part of it: the earlier job up to the point, the later one
    from there on its way to its first whole block. Whichever gets there second joins the
    parts and delivers the block, so neither inflates the other's part as well. The earlier
    job owns the block's claim, and hands it over with its part. Guarded by the reader's
    ``state``."""

    __slots__ = ("closed", "head", "tail")

    def __init__(self) -> None:
        self.head: bytes | None = None  # the earlier job's part; the claim went with it
        self.tail: bytes | None = None  # the later job's part
        self.closed = False  # resolved, or one side gone: the other inflates it all

    def close(self) -> None:
        self.closed = True
        self.head = self.tail = None


class InflateJob:
    """Inflate one span of seek points, [start, end), and cache the blocks that start in it:
    a cursor from the point at ``start``, finishing the last block past ``end``."""

    def __init__(
        self,
        reader: GzipLayerReader,
        point: int,
        start: int,
        end: int,
        claims: dict[int, threading.Event],
    ) -> None:
        self.reader = reader
        self.point = point
        self.start = start
        self.end = end
        self.claims = claims  # blocks still to deliver; settled by the reader
        self.seam_before: Seam | None = None
        self.seam_after: Seam | None = None
        self.seam_after_job: InflateJob | None = None  # the job on the other side of it
        self.started = False  # guarded by the reader's ``state``
        self.stopped = False
        self.finished = threading.Event()

    def run(self) -> None:
        """In a pool thread. Raises nothing: on damage the job just stops, and the read that
        gets there inflates the block itself and reports it."""
        reader = self.reader
        first = -(-self.start // BLOCK)
        with reader.state:
            if self.started:  # settled while queued (the reader closed)
                return
            self.started = True
            # The job before may have left its cursor right at our first block. Then this
            # job does not pass the seam point: the job before finishes that block alone.
            cursor = reader.parked.pop(first * BLOCK, None)
            if cursor is not None and self.seam_before is not None:
                self.seam_before.close()
        try:
            if cursor is None:
                cursor = GzipCursor(reader.fd, reader.points, self.point)
                self._enter(cursor, first * BLOCK - self.start)
            if self._inflate(cursor, first) and reader._park(cursor):
                cursor = None
        except Exception as error:  # damage is reported by the read that reaches it
            logger.debug(
                "%s: readahead of [%d, %d) stopped: %s",
                reader.layer.describe(),
                self.start,
                self.end,
                error,
            )
        finally:
            if cursor is not None:
                cursor.close()
            with reader.state:
                reader._finish(self)

    def _enter(self, cursor: GzipCursor, head: int) -> None:
        """Inflate from the seek point to the first whole block: the tail of the job
        before's last block, which goes to the seam while that job can use it."""
        if not head:
            return
        reader = self.reader
        with reader.state:
            seam = self.seam_before
            if seam is None or seam.closed:
                seam = None
        if seam is None:
            cursor.skip(head)
            return
        tail = cursor.read(head)
        with reader.state:
            if seam.closed:
                return
            if seam.head is None:
                seam.tail = tail
                return
            data, seam.head, seam.closed = seam.head + tail, None, True
        number = self.start // BLOCK
        if len(data) != min(BLOCK, reader.points.size - number * BLOCK):
            raise CompressionError(f"stream ends before {(number + 1) * BLOCK}")
        reader._deliver(self, number, data)

    def _inflate(self, cursor: GzipCursor, first: int) -> bool:
        """Deliver the claimed blocks from ``first`` on; True if the cursor got past the
        last one (where the next span's first block starts)."""
        reader, size = self.reader, self.reader.points.size
        last = -(-self.end // BLOCK) - 1
        for number in range(first, last + 1):
            if self.stopped or not self.claims:
                return False
            length = min(BLOCK, size - number * BLOCK)
            if number not in self.claims:  # cached meanwhile, or another read has it
                cursor.skip(length)
                continue
            data = self._block(cursor, number, length, number == last)
            if data is None:  # handed over to the next job, with its claim
                return False
            if len(data) != length:
                raise CompressionError(f"stream ends before {number * BLOCK + length}")
            reader._deliver(self, number, data)
        return cursor.position == (last + 1) * BLOCK

    def _block(self, cursor: GzipCursor, number: int, length: int, last: bool) -> bytes | None:
        """Inflate one block; None if it was the block across the end of the span, and the
        next job will finish it."""
        split = self.end - number * BLOCK
        if not last or split >= length:
            return cursor.read(length)
        reader = self.reader
        with reader.state:
            seam = self.seam_after
            if seam is None:  # too late for one now: the next job need not save its part
                self.seam_after = Seam()
                self.seam_after.close()
        if seam is None:
            return cursor.read(length)
        data = cursor.read(split)
        with reader.state:
            later = self.seam_after_job
            if not seam.closed and later is not None:
                if seam.tail is not None:
                    tail = seam.tail
                    seam.close()
                    return data + tail
                if later.started and later in reader.jobs:
                    # It is inflating its part now: it finishes the block (or, failing,
                    # settles the claim, and a read inflates the block itself).
                    seam.head = data
                    later.claims[number] = self.claims.pop(number)
                    return None
                # Still queued: go on, and leave it this cursor at its first block.
                seam.close()
        return data + cursor.read(length - split)


class InflatePool:
    """A few daemon threads running the readahead jobs of the readers of one BlockCache.

    Threads start with the first job and stop when the last reader detaches. ``budget``
    bounds the bytes of jobs queued or running at once, over all readers."""

    def __init__(self, workers: int, budget: int) -> None:
        self.workers = workers
        self.budget = budget
        self.cond = threading.Condition()
        self.queue: deque[InflateJob] = deque()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.users = 0
        self.outstanding = 0
        self.generation = 0  # bumped when the threads are told to stop

    def attach(self) -> None:
        with self.cond:
            self.users += 1

    def detach(self) -> None:
        with self.cond:
            self.users -= 1
            if self.users > 0:
                return
            threads, self.threads = self.threads, []
            self.queue.clear()
            self.idle = 0
            self.generation += 1
            self.cond.notify_all()
        for thread in threads:
            thread.join()

    def reserve(self, size: int) -> bool:
        with self.cond:
            if self.outstanding + size > self.budget:
                return False
            self.outstanding += size
            return True

    def release(self, size: int) -> None:
        with self.cond:
            self.outstanding -= size

    def submit(self, job: InflateJob) -> bool:
        """Queue a job; False if no thread can run it."""
        with self.cond:
            self.queue.append(job)
            if len(self.queue) <= self.idle or len(self.threads) >= self.workers:
                self.cond.notify()
                return True
            thread = threading.Thread(
                target=self._work,
                args=(self.generation,),
                name=f"ocifs-inflate-{len(self.threads)}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError as error:  # no more threads: the reads inflate by themselves
                logger.debug("no readahead thread: %s", error)
                if self.threads:
                    return True  # one of those runs it
                self.queue.remove(job)
                return False
            self.threads.append(thread)
            return True

    def _work(self, generation: int) -> None:
        name_os_thread(threading.current_thread().name)
        while True:
            with self.cond:
                while not self.queue:
                    if generation != self.generation:
                        return
                    self.idle += 1
                    self.cond.wait()
                    if generation == self.generation:
                        self.idle -= 1
                if generation != self.generation:
                    return
                job = self.queue.popleft()
            try:
                job.run()
            except Exception:  # run() catches everything it expects; this thread goes on
                logger.exception("readahead job failed")


class BlockCache:
    """The most recently read decompressed blocks of all layers, bounded by their total size."""

    def __init__(self, limit: int = BLOCK_CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.blocks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.lock = threading.Lock()
        # Readahead for the readers of this cache: one pool, one bound on jobs in flight.
        self.pool = InflatePool(WORKERS, limit // 4)

    def contains(self, key: tuple[int, int]) -> bool:
        """Whether a block is cached, without counting as a use."""
        with self.lock:
            return key in self.blocks

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self.lock:
            block = self.blocks.get(key)
            if block is not None:
                self.blocks.move_to_end(key)
            return block

    def put(self, key: tuple[int, int], block: bytes) -> None:
        with self.lock:
            old = self.blocks.pop(key, None)
            self.size += len(block) - (len(old) if old is not None else 0)
            self.blocks[key] = block
            while self.size > self.limit and len(self.blocks) > 1:
                _, evicted = self.blocks.popitem(last=False)
                self.size -= len(evicted)


def name_os_thread(name: str) -> None:
    """Show a thread's name in ps, top and perf too (Python before 3.14 names only its own
    object; the OS thread keeps the name of the thread that started it)."""
    with contextlib.suppress(Exception):  # Linux only; elsewhere the name is cosmetic
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_char_p]
        prctl.restype = ctypes.c_int
        prctl(PR_SET_NAME, name.encode()[:15])


def open_reader(
    layer: LayerRef, points: SeekPoints | None, cache: BlockCache
) -> TarLayerReader | GzipLayerReader:
    """A reader for an indexed layer; raises LayerError if its blob cannot be opened."""
    try:
        if layer.compression is Compression.GZIP:
            if points is None:
                raise LayerError(f"{layer.describe()}: gzip layer without seek points")
            return GzipLayerReader(layer, points, cache)
        return TarLayerReader(layer)
    except OSError as error:
        raise LayerError(f"{layer.describe()}: cannot open blob: {error.strerror}") from error
