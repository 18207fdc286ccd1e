"""Build, with ``buildah build``, the small image ``test_inspect`` checks ``ocifs inspect``
against, and export it with skopeo as an OCI layout: a Containerfile from scratch whose
COPY steps make layers and whose ENV, CMD and the like make history steps without one
(``empty_layer``), as buildah records them. Runs in ``realimages.Tools``'s private namespace.

    python tests/inspectbuild.py WORK RUNS LAYOUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from realimages import Work, buildah

BIG = 100_000  # the file a later layer replaces: what it wastes
SMALL = b"small\n"
CONTAINERFILE = """\
FROM scratch
COPY motd /etc/motd
ENV A=1 B=2
COPY big /data/big
LABEL k=v
COPY small /data/big
WORKDIR /srv
USER 1000:1000
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["/bin/app"]
"""


def build(work: Work, layout: Path) -> None:
    if os.environ.get("OCIFS_TEST_ISOLATED") != "1":
        work.tools.run(sys.executable, __file__, work.root, work.runs, layout)
        return
    context = work.root / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Containerfile").write_text(CONTAINERFILE)
    (context / "motd").write_text("hello\n")
    (context / "big").write_bytes(b"x" * BIG)
    (context / "small").write_bytes(SMALL)
    name = "localhost/ocifs-inspect:v1"
    buildah(
        work, "build", "--quiet", "--layers", "-t", name, "-f", context / "Containerfile", context
    )
    work.tools.skopeo("copy", "--quiet", work.build_store.ref(name), f"oci:{layout}:v1")


if __name__ == "__main__":
    build(Work(Path(sys.argv[1]), Path(sys.argv[2])), Path(sys.argv[3]))
