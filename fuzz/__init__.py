"""The ocifs fuzzer: mutated small images, mounted, walked, read, and every outcome classified.

    scripts/fuzz [--seconds N] [--seed N] [--out DIR] [--json FILE] [--replay CASE]

(``scripts/fuzz`` runs ``python -m fuzz`` from the repository root.) Each case is drawn from
the run's seed and its number, so a run is reproducible: a seed image (``seeds``: gzip, plain,
zstd one-frame and many-frame layers, an index of two platforms, an oci-archive, a
docker-archive and its unpacked directory), one to three mutations (``mutations``: JSON
fields, tar headers and PAX records, gzip and zstd bytes, the store's files, the index
cache, the command line), built with every digest, diff_id and size recomputed above the
damage (most cases: so the damage reaches the parsers) or left as they were (``build``).
The case is mounted with the real ``ocifs mount`` (private cache dir, log file, timeouts),
walked and read by a process of its own (``walker``), unmounted and checked for what is left
(``runner``); a share of the mounts runs under strace, and canary files sit where mutations
aim (``hostpaths``). Every outcome gets a class (``classify``): clean refusal, correct mount,
or what went wrong (host path touched, wrong bytes, crash, stale mount, hang, traceback, ...),
and the findings already known are told apart by their own signature.

A failing case is kept under OUT/cases/NNNNN-CLASS with ``case.json`` (its spec, what each
mutation did, the outcome, stderr, the log) and its store; ``scripts/fuzz --replay DIR``
builds and runs it again. ``tests/test_fuzz.py`` runs a one-minute fuzz as part of the suite.
Needs root (FUSE mounts), fusermount3 and zstd; strace where it is installed.
"""
