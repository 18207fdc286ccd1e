"""The ocifs benchmark: ocifs against ratarmount, umoci unpack and gzip -dc, one run, one table.

    scripts/bench [--only IMAGE]... [--json FILE] [--workdir DIR] [--rebuild]
                  [--skip-ratarmount] [--skip-umoci] [--keep-unpacked] [--ocifs CMD]

(``scripts/bench`` runs ``python -m bench`` from the repository root.) It builds its images
itself from what is on this machine, once, into WORKDIR/<image>/layout (WORKDIR defaults to
/tmp/ocifs-bench; an image is reused while its build.json matches what would be built,
--rebuild forces a new build):

* large: two gzip layers, a tar of /usr/share and a tar of the pyenv root ($PYENV_ROOT or
  ~/.pyenv; else the running Python's own prefix, else Debian's /usr/lib/python3.X);
* debian: a base gzip layer with a small userland (/etc, /usr/bin and /usr/sbin without their
  biggest programs, the top-level libraries of /usr/lib/<arch>-linux-gnu, the merged-/usr
  symlinks) and an upper gzip layer with a 64 MiB incompressible file (os.urandom) and a
  64 MiB compressible one (generated log lines).

Layers are made with ``tar | gzip -6 -n`` (both layers of an image at once) and written into
an OCI layout with ``ocifs.ocibuild.LayoutWriter``. From each, ``skopeo copy`` derives the same
image in the other formats (``formats``), into WORKDIR/<image>-<format>, cached the same way:

* <image>-zstd: an OCI layout of single-frame zstd layers (``--dest-compress-format zstd``);
* <image>-chunked: zstd:chunked layers (``--dest-compress-format zstd:chunked``);
* <image>-docker: a docker-archive tarball (plain tar layers), mounted in place.

--only IMAGE (again for more) picks among debian, debian-zstd, ..., large-docker; the default
is all of them.

Then, for each image, the same steps for every tool (ocifs, ratarmount, umoci/unpacked tree):

* first mount: ``ocifs mount -f --cache-dir FRESH LAYOUT:REF MNT`` (digests verified, the
  default) and ``ratarmount -f --index-folders EMPTY BLOB... MNT`` as foreground children, timed
  until MNT shows up in /proc/self/mounts (polled every 10 ms); peak RSS while indexing is the
  child's VmHWM just then, or the largest VmHWM its own children showed while polled (ocifs
  indexes a first mount in a child process), the daemon's RSS its VmRSS. Against ``umoci
  unpack`` (time and ``du -sb`` of the bundle; a derived image shares its gzip image's) and
  the floor: ``gzip -dc BLOB >/dev/null`` of each layer, summed (``zstd -dc`` for zstd and
  zstd:chunked, SHA-256 by hashlib of a docker-archive tarball); ratarmount takes the zstd
  blobs too, but not the tarball (its cells say why);
* later mount: unmount, mount again with the same cache dir / index folder;
* ``find MNT | wc -l`` on the fresh first mount, then ``lstat`` of every entry (os.scandir
  walk), against the same on the unpacked tree on local disk (the floor);
* per big file (debian: both 64 MiB files; large: its largest regular file): on a fresh mount
  a cold sequential read (1 MiB reads) and a second one, in MB/s (for ocifs and ratarmount the
  median of three fresh mounts in turn: one cold read swings by a third); on another fresh mount 300
  random 4 KiB preads at seeded 4 KiB-aligned offsets (the same for every tool, under
  POSIX_FADV_RANDOM), median and p99 in ms.

--keep-unpacked keeps umoci's tree in WORKDIR/unpacked-<image> (with a record of the blobs it
came from and its unpack time, CPU and disk) and, in a later run, measures that tree instead of
unpacking again, showing the earlier run's unpack figures (a note in the table says so): the
walks and reads on local disk are measured anew, the minutes of the unpack are not.

Before every cold step the page cache of the files read is dropped (/proc/sys/vm/drop_caches
when writable, else posix_fadvise DONTNEED on the blobs, indexes and unpacked files).
ratarmount is installed from PyPI into WORKDIR/venv-ratarmount on first use. Output: a header
(machine, versions, image sizes) and one table with the ratios ocifs / ratarmount and
ocifs / floor and the targets; --json FILE also writes every raw number. Progress goes to
stderr. Needs root, /dev/fuse, fusermount3, tar, gzip and umoci, and skopeo and zstd for the
derived images (an image that cannot be derived is left out, with a note); a full run takes
tens of minutes (for the large image umoci unpack takes ~100 s and ratarmount's first mount
~30 s; the first build of large-chunked ~6 min).

The modules, one job each: ``steps`` (commands, progress, failed steps), ``formats`` (what
differs between the image formats), ``images`` (building and deriving the images),
``zstdframes`` (what a zstd writer wrote), ``tools`` (the commands compared, their versions),
``probes`` (the things timed), ``measure`` (the steps for each tool, cold caches), ``report``
(the table, the text, --json), ``__main__`` (the options and the run). Six measurements stand
apart from the run, each with its own command line: ``imagediff`` (``ocifs diff`` of two images
sharing a base against ``diff -rq`` over mounts and unpacked trees), ``zstdbinding`` (the zstd
bindings ocifs could use: speed, the GIL, frame ends), ``zstdreads`` (random 4 KiB reads of
zstd layers through a mount), ``blockcheck`` (the sums ocifs could check its blocks with:
speed, the GIL, their cost per block read and in the indexing pass), ``checkprofile`` (the
block checks' share of the daemon's time in a profile of a cold read) and ``windows`` (what
the seek points' windows could be compressed with).
"""
