"""Which image a REF names: the REF a user types matched against the names an image carries.

An image in a layout or an archive is named by an ``org.opencontainers.image.ref.name``
(``v1``, or a whole name such as ``localhost/app:v1`` as podman writes it), by containerd's
``io.containerd.image.name`` (Docker 25+ archives) or by a ``RepoTags`` entry of a docker
archive's ``manifest.json`` (``busybox:latest`` from Docker, ``docker.io/library/busybox:latest``
or ``localhost/app:v1`` from podman and skopeo). A REF matches in the first of these tiers
that gives any image, and that tier must give exactly one:

1. the REF is one of the image's names, as written;
2. both, normalized as Docker and podman normalize them, are the same: the tag defaults to
   ``latest``, a name without a registry is on ``docker.io``, and a one-part name there is
   under ``library/`` (``busybox`` is ``docker.io/library/busybox:latest``);
3. the REF has no registry and names the image's repository without it, as podman looks up
   its local images (``app:v1`` and ``app`` find ``localhost/app:v1`` and ``localhost/app``, or
   ``quay.io/org/app``: whatever ends in ``/app`` with that tag).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Item = TypeVar("Item")

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
LEGACY_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Reference:
    """An image name cut into its parts; ``domain`` None when the name gives none."""

    domain: str | None
    path: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Reference | None:
        """``[domain/]path[:tag][@digest]``, or None if it is no image name at all."""
        name = text.split("@", 1)[0]
        slash, colon = name.rfind("/"), name.rfind(":")
        tag = DEFAULT_TAG
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
        domain: str | None = None
        first, _, rest = name.partition("/")
        # A first part with '.', ':' or capitals, or 'localhost', is a registry (Docker's rule).
        registry = "." in first or ":" in first or first == "localhost" or first != first.lower()
        if rest and registry:
            domain, name = first, rest
        if not name or not tag or "" in name.split("/"):
            return None
        return cls(domain, name, tag)

    def normalized(self) -> str:
        domain = self.domain or DEFAULT_DOMAIN
        if domain in LEGACY_DOMAINS:
            domain = DEFAULT_DOMAIN
        path = self.path
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = f"library/{path}"
        return f"{domain}/{path}:{self.tag}"


def _exact(ref: str, name: str) -> bool:
    return ref == name


def _normalized(ref: str, name: str) -> bool:
    wanted, given = Reference.parse(ref), Reference.parse(name)
    return wanted is not None and given is not None and wanted.normalized() == given.normalized()


def _short(ref: str, name: str) -> bool:
    wanted, given = Reference.parse(ref), Reference.parse(name)
    if wanted is None or given is None or wanted.domain is not None or wanted.tag != given.tag:
        return False
    return given.path == wanted.path or given.path.endswith(f"/{wanted.path}")


TIERS: tuple[Callable[[str, str], bool], ...] = (_exact, _normalized, _short)


def match(ref: str, candidates: Sequence[tuple[Iterable[str], Item]]) -> list[Item]:
    """The items whose names the REF matches, in the first tier that matches any (in the
    candidates' order; the caller decides whether several are ambiguous)."""
    named = [(list(names), item) for names, item in candidates]
    for matches in TIERS:
        found = [item for names, item in named if any(matches(ref, name) for name in names)]
        if found:
            return found
    return []
