"""Prefetch: inflate the spans ahead of a sequential reader of a gzip layer in worker threads.

(A zstd layer's reader uses it the same way, with its frame starts as the seek points and
zstd cursors: ``Prefetcher`` takes the cursor type.)

(ocifs's own inflating ahead; "readahead" is the kernel's, which FUSE asks for separately.)
A run of reads that follow each other (``Stream``) gets the spans between the later seek
points of its layer handed to the image's ``InflatePool``, each inflated by a cursor of its
own (``InflateJob``): zlib runs without the GIL, so several spans inflate at once on separate
cores while the reads go on. The reader and its jobs share one ``Prefetcher`` per layer: the
claims on blocks being inflated, so that no block is inflated twice, and the cursors the jobs
leave where the reads take over. Neighbouring jobs share the block across the seek point
between them (``Seam``), or the later one goes on with the cursor the earlier one parked: the
stream inflates once. A job checks each block against the layer's block sums
(``blockcheck``) before it caches it; on a mismatch it stops, caching nothing more, and the
read that reaches the block inflates it itself and reports it.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

from .blobs import BlobHandle
from .blockcache import CACHE_BLOCK, BlockCache
from .blockcheck import BlockSums
from .errors import CompressionError
from .gzseek import SeekPoints, new_cursor
from .layout import LayerRef

logger = logging.getLogger(__name__)


class Cursor(Protocol):
    """A decoder of a layer's stream started at a seek point (GzipCursor, ZstdCursor)."""

    position: int

    def read(self, size: int) -> bytes: ...

    def skip(self, count: int) -> None: ...

    def close(self) -> None: ...


# Opens a cursor at a seek point: (the blob, its points, the point's index).
CursorFactory = Callable[[BlobHandle, SeekPoints, int], Cursor]

# How far ahead of a sequential reader spans are inflated (at most ``cache_share`` of the
# block cache), and after how many bytes read in a row.
PREFETCH_BYTES = 4 << 20
PREFETCH_TRIGGER = 2 * CACHE_BLOCK
# Threads per image: zlib through ctypes runs without the GIL, so each can have a core.
PREFETCH_WORKERS = max(1, min(4, os.cpu_count() or 1))
JOB_MIN = 2 * CACHE_BLOCK  # shorter spans between seek points are joined to the next
MAX_STREAMS = 8  # sequential runs followed per layer
MAX_PARKED = 2  # cursors of finished jobs kept per layer (each holds its input)
# ... and per image, over all its layers: a parked cursor holds up to 0.6 MiB (its input
# chunk, skip scratch, window and state) outside the cursor budget, and a stream that stops
# leaves its layer's there until that layer is prefetched again. Two per layer of a 30-layer
# image read through once would keep 60 of them (about 30 MiB) for the life of the mount.
MAX_PARKED_IMAGE = 2 * PREFETCH_WORKERS
# A span whose compressed size is at least this fraction of its size is mostly stored
# blocks: inflating it is a copy, cheaper done by the read itself than handed to a thread
# (whose Python work per block would contend for the GIL with the FUSE requests).
STORED_RATIO = 0.9
PR_SET_NAME = 15  # linux/prctl.h


def cache_share(cache: BlockCache) -> int:
    """How much of the cache prefetch may fill: the bytes of jobs in flight for all layers,
    and the distance ahead of one reader. More, and blocks would be evicted before they
    are read."""
    return cache.limit // 4


class Prefetcher:
    """What the reader of one gzip layer and its prefetch jobs share, guarded by ``state``.

    Every block being inflated, by a read or by a job, is claimed in ``pending``: its Event
    is set once the block is cached or given up, so a read waits for a block being produced
    instead of inflating it again. The reader calls ``claim``/``settle`` around inflating a
    block itself, ``follow`` and ``schedule`` for each read, and ``take_parked`` for a
    cursor a job left where the read goes on. Without a pool nothing is prefetched, and
    only the claims are used. ``state`` is never held while inflating or waiting.
    """

    def __init__(
        self,
        layer: LayerRef,
        blob: BlobHandle,
        points: SeekPoints,
        cache: BlockCache,
        pool: InflatePool | None,
        open_cursor: CursorFactory = new_cursor,
        blocks: BlockSums | None = None,
    ) -> None:
        self.layer = layer
        self.open_cursor = open_cursor
        self.blocks = blocks  # what each block is checked against before it is cached
        self.blob = blob  # the reader's; it closes it after ``close``
        self.points = points
        self.cache = cache
        self.pool = pool
        self.state = threading.Lock()
        self.pending: dict[int, threading.Event] = {}  # block number -> set when settled
        self.streams: list[Stream] = []  # most recently extended last
        self.jobs: set[InflateJob] = set()  # queued or running
        # Cursors of finished jobs, by position: the next span's job goes on from there
        # instead of inflating the block across the seek point again.
        self.parked: OrderedDict[int, Cursor] = OrderedDict()
        self.jobs_started = 0  # jobs handed to the pool, ever
        self.closed = False
        # Never further ahead than a share of the cache, or the blocks would be evicted
        # before they are read; too small a cache gets no prefetch at all.
        self.ahead = min(PREFETCH_BYTES, cache_share(cache)) if pool is not None else 0

    # The reader's side.

    def claim(self, number: int) -> bytes | None:
        """The block, if another read or a job cached it meanwhile; else None, and the
        caller holds the block's claim: it inflates the block, then calls ``settle``."""
        key = (self.layer.position, number)
        while True:
            with self.state:
                event = self.pending.get(number)
                if event is None:
                    # Checked again under the lock: a job caches a block before it settles it.
                    data = self.cache.get(key)
                    if data is not None:
                        return data
                    self.pending[number] = threading.Event()
                    return None
            event.wait()  # another read or a job is inflating it: one inflate per block
            data = self.cache.get(key)
            if data is not None:
                return data
            # The job gave up (a damaged region, closing) or the block was evicted already.

    def settle(self, number: int) -> None:
        """Give up the claim ``claim`` handed out, cached or not."""
        with self.state:
            event = self.pending.pop(number)
        event.set()

    def take_parked(self, low: int, high: int) -> Cursor | None:
        """The cursor a job parked furthest on in [low, high], now the caller's."""
        with self.state:
            best = None
            for position in self.parked:
                if low <= position <= high and (best is None or position > best):
                    best = position
            return self.parked.pop(best) if best is not None else None

    def follow(self, offset: int, end: int) -> Stream | None:
        """The stream this read continues (or starts), if it has been sequential long enough
        to be worth prefetching for. Reads in flight together may arrive a little out of
        order, hence the slack behind the stream's end."""
        if self.ahead < JOB_MIN:
            return None
        with self.state:
            for stream in reversed(self.streams):
                if stream.end - 2 * CACHE_BLOCK <= offset <= stream.end + CACHE_BLOCK:
                    self.streams.remove(stream)
                    stream.end = max(stream.end, end)
                    stream.run += end - offset
                    break
            else:
                stream = Stream(end, end - offset)
                if len(self.streams) >= MAX_STREAMS:
                    self.streams.pop(0)
            self.streams.append(stream)
            return stream if stream.run >= PREFETCH_TRIGGER else None

    def schedule(self, stream: Stream, position: int) -> None:
        """Hand the spans between the seek points after ``position`` to the pool, up to
        ``self.ahead`` bytes ahead; each job caches the blocks that start in its span."""
        horizon = position + self.ahead
        if stream.scheduled >= horizon:  # the usual case, without taking the lock
            return
        points, size = self.points.uncompressed, self.points.size
        compressed = self.points.compressed
        with self.state:
            if self.closed or self.pool is None:
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
                        self.finish(job)
                        return
                stream.scheduled = span_end
                index = after

    def _claim(
        self, index: int, start: int, end: int, before: InflateJob | None
    ) -> InflateJob | None:
        """A job for the blocks that start in [start, end) and are neither cached nor
        claimed; None when there are none. Called under ``self.state``."""
        claims: dict[int, threading.Event] = {}
        for number in range(-(-start // CACHE_BLOCK), -(-end // CACHE_BLOCK)):
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
        seam_block = start // CACHE_BLOCK
        if (
            start % CACHE_BLOCK
            and before is not None
            and before.end == start
            and seam_block in before.claims
            and before in self.jobs
            and before.seam_after is None
        ):
            before.seam_after = job.seam_before = Seam()
            before.seam_after_job = job
        return job

    def close(self) -> None:
        """Stop the jobs and close the parked cursors; queued jobs are dropped, running
        ones stop at their next block (they read the reader's blob handle: this waits for them)."""
        with self.state:
            if self.closed:
                return
            self.closed = True
            jobs = list(self.jobs)
            for job in jobs:
                job.stopped = True
                if not job.started:
                    self.finish(job)
        for job in jobs:
            job.finished.wait()
        with self.state:
            for cursor in self.parked.values():
                cursor.close()
            self.parked.clear()

    # The jobs' side.

    def deliver(self, job: InflateJob, number: int, data: bytes) -> None:
        """Cache a block the job inflated and settle its claim. A block that differs from
        the indexed one raises BlockMismatch: the job stops, and ``finish`` settles the
        claim with nothing cached."""
        if self.blocks is not None:
            self.blocks.check(number, data)
        self.cache.put((self.layer.position, number), data)
        with self.state:
            event = job.claims.pop(number)
            if self.pending.get(number) is event:
                del self.pending[number]
        event.set()

    def park(self, cursor: Cursor) -> bool:
        """Keep a finished job's cursor for the job or read that goes on from there; False
        if it is of no use (closing, or at the end of the stream)."""
        with self.state:
            if self.closed or cursor.position >= self.points.size:
                return False
            old = self.parked.pop(cursor.position, None)
            if old is not None:
                old.close()
            position = cursor.position  # once ``state`` is let go, a read may take it on
            self.parked[position] = cursor
            if len(self.parked) > MAX_PARKED:  # a stream that stopped: its reader went away
                self.parked.popitem(last=False)[1].close()
        if self.pool is not None:
            # Outside ``state``: the pool's lock is taken under it elsewhere, never around it.
            for prefetcher, at in self.pool.note_parked(self, position):
                prefetcher.unpark(at)
        return True

    def unpark(self, position: int) -> None:
        """Close the cursor parked at ``position``, if one still is (the image has too many)."""
        with self.state:
            cursor = self.parked.pop(position, None)
        if cursor is not None:
            cursor.close()

    def finish(self, job: InflateJob) -> None:
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
        assert self.pool is not None  # only a pool's jobs get here
        self.pool.release(job.end - job.start)
        job.finished.set()


class Stream:
    """A run of reads of one layer that follow each other."""

    __slots__ = ("end", "last_job", "run", "scheduled")

    def __init__(self, end: int, run: int) -> None:
        self.end = end  # where the last read ended
        self.run = run  # bytes read in the run so far
        self.scheduled = 0  # prefetch was handed out up to here
        self.last_job: InflateJob | None = None


class Seam:
    """The block across the seek point where one job's span ends and the next one's begins.

    Each of the two inflates its part of it: the earlier job up to the point, the later one
    from there on its way to its first whole block. Whichever gets there second joins the
    parts and delivers the block, so neither inflates the other's part as well. The earlier
    job owns the block's claim, and hands it over with its part. Guarded by the
    prefetcher's ``state``."""

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
        prefetcher: Prefetcher,
        point: int,
        start: int,
        end: int,
        claims: dict[int, threading.Event],
    ) -> None:
        self.prefetcher = prefetcher
        self.point = point
        self.start = start
        self.end = end
        self.claims = claims  # blocks still to deliver; settled by the prefetcher
        self.seam_before: Seam | None = None
        self.seam_after: Seam | None = None
        self.seam_after_job: InflateJob | None = None  # the job on the other side of it
        self.started = False  # guarded by the prefetcher's ``state``
        self.stopped = False
        self.finished = threading.Event()

    def run(self) -> None:
        """In a pool thread. Raises nothing: on damage the job just stops, and the read that
        gets there inflates the block itself and reports it."""
        prefetcher = self.prefetcher
        first = -(-self.start // CACHE_BLOCK)
        with prefetcher.state:
            if self.started:  # settled while queued (the reader closed)
                return
            self.started = True
            # The job before may have left its cursor right at our first block. Then this
            # job does not pass the seam point: the job before finishes that block alone.
            cursor = prefetcher.parked.pop(first * CACHE_BLOCK, None)
            if cursor is not None and self.seam_before is not None:
                self.seam_before.close()
        try:
            if cursor is None:
                cursor = prefetcher.open_cursor(prefetcher.blob, prefetcher.points, self.point)
                self._enter(cursor, first * CACHE_BLOCK - self.start)
            if self._inflate(cursor, first) and prefetcher.park(cursor):
                cursor = None
        except Exception as error:  # damage is reported by the read that reaches it
            logger.debug(
                "%s: prefetch of [%d, %d) stopped: %s",
                prefetcher.layer.describe(),
                self.start,
                self.end,
                error,
            )
        finally:
            if cursor is not None:
                cursor.close()
            with prefetcher.state:
                prefetcher.finish(self)

    def cancel(self) -> None:
        """Settle a job that will not run (its pool closed), so no read waits for it."""
        with self.prefetcher.state:
            self.prefetcher.finish(self)

    def _enter(self, cursor: Cursor, head: int) -> None:
        """Inflate from the seek point to the first whole block: the tail of the job
        before's last block, which goes to the seam while that job can use it."""
        if not head:
            return
        prefetcher = self.prefetcher
        with prefetcher.state:
            seam = self.seam_before
            if seam is None or seam.closed:
                seam = None
        if seam is None:
            cursor.skip(head)
            return
        tail = cursor.read(head)
        with prefetcher.state:
            if seam.closed:
                return
            if seam.head is None:
                seam.tail = tail
                return
            data, seam.head, seam.closed = seam.head + tail, None, True
        number = self.start // CACHE_BLOCK
        if len(data) != min(CACHE_BLOCK, prefetcher.points.size - number * CACHE_BLOCK):
            raise CompressionError(f"stream ends before {(number + 1) * CACHE_BLOCK}")
        prefetcher.deliver(self, number, data)

    def _inflate(self, cursor: Cursor, first: int) -> bool:
        """Deliver the claimed blocks from ``first`` on; True if the cursor got past the
        last one (where the next span's first block starts)."""
        prefetcher, size = self.prefetcher, self.prefetcher.points.size
        last = -(-self.end // CACHE_BLOCK) - 1
        for number in range(first, last + 1):
            if self.stopped or not self.claims:
                return False
            length = min(CACHE_BLOCK, size - number * CACHE_BLOCK)
            if number not in self.claims:  # cached meanwhile, or another read has it
                cursor.skip(length)
                continue
            data = self._block(cursor, number, length, number == last)
            if data is None:  # handed over to the next job, with its claim
                return False
            if len(data) != length:
                raise CompressionError(f"stream ends before {number * CACHE_BLOCK + length}")
            prefetcher.deliver(self, number, data)
        return cursor.position == (last + 1) * CACHE_BLOCK

    def _block(self, cursor: Cursor, number: int, length: int, last: bool) -> bytes | None:
        """Inflate one block; None if it was the block across the end of the span, and the
        next job will finish it."""
        split = self.end - number * CACHE_BLOCK
        if not last or split >= length:
            return cursor.read(length)
        prefetcher = self.prefetcher
        with prefetcher.state:
            seam = self.seam_after
            if seam is None:  # too late for one now: the next job need not save its part
                self.seam_after = Seam()
                self.seam_after.close()
        if seam is None:
            return cursor.read(length)
        data = cursor.read(split)
        with prefetcher.state:
            later = self.seam_after_job
            if not seam.closed and later is not None:
                if seam.tail is not None:
                    tail = seam.tail
                    seam.close()
                    return data + tail
                if later.started and later in prefetcher.jobs:
                    # It is inflating its part now: it finishes the block (or, failing,
                    # settles the claim, and a read inflates the block itself).
                    seam.head = data
                    later.claims[number] = self.claims.pop(number)
                    return None
                # Still queued: go on, and leave it this cursor at its first block.
                seam.close()
        return data + cursor.read(length - split)


class InflatePool:
    """A few daemon threads running the prefetch jobs of the readers of one image.

    Threads start with the first job and stop at ``close``, which comes after the readers'.
    ``budget`` bounds the bytes of jobs queued or running at once, over all readers."""

    def __init__(self, workers: int, budget: int) -> None:
        self.workers = workers
        self.budget = budget
        self.cond = threading.Condition()
        self.queue: deque[InflateJob] = deque()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.outstanding = 0
        self.closed = False
        # The cursors the image's prefetchers have parked, oldest first (see MAX_PARKED_IMAGE).
        self.parked: OrderedDict[tuple[Prefetcher, int], None] = OrderedDict()

    def reserve(self, size: int) -> bool:
        with self.cond:
            if self.outstanding + size > self.budget:
                return False
            self.outstanding += size
            return True

    def release(self, size: int) -> None:
        with self.cond:
            self.outstanding -= size

    def note_parked(self, prefetcher: Prefetcher, position: int) -> list[tuple[Prefetcher, int]]:
        """Count a cursor parked; the oldest ones over the image's limit, for their
        prefetchers to close (some may have been taken or closed since: then nothing is)."""
        with self.cond:
            self.parked.pop((prefetcher, position), None)
            self.parked[(prefetcher, position)] = None
            over = len(self.parked) - MAX_PARKED_IMAGE
            return [self.parked.popitem(last=False)[0] for _ in range(max(0, over))]

    def submit(self, job: InflateJob) -> bool:
        """Queue a job; False if no thread can run it."""
        with self.cond:
            if self.closed:
                return False
            self.queue.append(job)
            if len(self.queue) <= self.idle or len(self.threads) >= self.workers:
                self.cond.notify()
                return True
            thread = threading.Thread(
                target=self._work, name=f"ocifs-inflate-{len(self.threads)}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as error:  # no more threads: the reads inflate by themselves
                logger.debug("no prefetch thread: %s", error)
                if self.threads:
                    return True  # one of those runs it
                self.queue.remove(job)
                return False
            self.threads.append(thread)
            return True

    def close(self) -> None:
        """Stop the threads once their jobs are done; jobs still queued are settled."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            dropped = list(self.queue)
            self.queue.clear()
            threads, self.threads = self.threads, []
            self.cond.notify_all()
        for job in dropped:
            job.cancel()
        for thread in threads:
            thread.join()

    def _work(self) -> None:
        name_os_thread(threading.current_thread().name)
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.idle += 1
                    self.cond.wait()
                    self.idle -= 1
                if self.closed:
                    return
                job = self.queue.popleft()
            try:
                job.run()
            except Exception:  # run() catches everything it expects; this thread goes on
                logger.exception("prefetch job failed")


def name_os_thread(name: str) -> None:
    """Show a thread's name in ps, top and perf too (Python before 3.14 names only its own
    object; the OS thread keeps the name of the thread that started it)."""
    with contextlib.suppress(Exception):  # Linux only; elsewhere the name is cosmetic
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_char_p]
        prctl.restype = ctypes.c_int
        prctl(PR_SET_NAME, name.encode()[:15])
