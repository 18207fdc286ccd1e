"""The ocifs stress run: many readers and a looping ``find`` on one mount, every byte checked,
the daemon's memory watched.

    scripts/stress [--seconds N] [--threads N] [--read-cache SIZE] [--rss-margin SIZE]
                   [--workdir DIR] [--reference DIR] [--json FILE] [--ocifs CMD] [--seed N]
                   [--drop-caches | --keep-page-cache] [IMAGE]

(``scripts/stress`` runs ``python -m stress`` from the repository root.) IMAGE is
``LAYOUT:REF``; by default the benchmark's debian image (/tmp/ocifs-bench/debian/layout:debian,
built by ``scripts/bench``) if it is there, else a small image of three layers (gzip, zstd,
gzip, with whiteouts) built into WORKDIR (``smallimage``).

The run:

* the reference: ``umoci unpack`` of the same image into a directory (``--reference DIR``
  keeps it for the next run of the same image), the merged tree as the tool the oracle tests
  trust writes it; its regular files are what is read;
* ``ocifs index`` into a cache of the run's own, then ``ocifs mount -f --read-cache SIZE`` as
  our child, so its pid is the daemon's and the mount starts from the cache, as later mounts do;
* the idle RSS, then for ``--seconds``: THREADS threads each picking a file (by count or by
  size, alternately) and reading a sequential stretch of it, random ranges or 4 KiB pages,
  each read compared with the reference's bytes at the same offset; meanwhile ``find`` walks
  the mount in a loop. After each file the kernel's page cache of it is dropped
  (POSIX_FADV_DONTNEED), so the reads reach the daemon rather than the page cache;
* the daemon's VmRSS and VmHWM, read from /proc every second (and its memory map by kind at
  the end, the largest first);
* the report: reads, bytes, mismatches, read errors, ``find`` loops, RSS idle / median /
  peak (the larger of the sampled maximum and VmHWM) against the read cache.

Exit status: 0, or 1 on any mismatch or read error, or if the peak RSS exceeds the read cache
plus ``--rss-margin`` (64 MiB by default), or 2 if the run could not start. Needs root (or a
user who may mount FUSE), /dev/fuse, fusermount3, umoci and find.

The modules, one job each: ``smallimage`` (the image built when there is no other),
``reference`` (the unpacked image and its files), ``load`` (the reader threads and the
``find`` loop), ``memory`` (the daemon's RSS and memory map), ``__main__`` (the options, the
run and the report).
"""
