"""Media types and compressions: the one table of what an image may hold and what ocifs reads.

Everything that varies with a document's or a layer's media type is decided here: which
documents are manifests, indexes and configs, and for each layer media type its compression.
A compression says whether ocifs can serve it and whether its readers need seek points.
Adding a compression means a row here (and its magic bytes, for the streams that name no media
type) and its indexer and reader, nothing else.
"""

from __future__ import annotations

import enum

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
# The whole image name containerd and Docker 25+ put next to a ref name that is only a tag.
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
ENCRYPTED_SUFFIX = "+encrypted"


class Compression(enum.StrEnum):
    """How a layer's tar stream is stored in its blob (its value is the name users see)."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def supported(self) -> bool:
        """Whether ocifs can index and serve layers stored this way."""
        return self in SUPPORTED

    @property
    def seekable_by_points(self) -> bool:
        """Whether reads need seek points recorded while indexing (else they go by offset)."""
        return self in SEEKABLE_BY_POINTS


SUPPORTED = frozenset({Compression.NONE, Compression.GZIP, Compression.ZSTD})
# gzip: deflate block boundaries with their windows; zstd: frame starts (Z2).
SEEKABLE_BY_POINTS = frozenset({Compression.GZIP, Compression.ZSTD})

# Layer media type -> compression (R7).
LAYER_TYPES: dict[str, Compression] = {
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}

# How a stream that names no media type (a docker-archive layer, an archive itself) is
# stored, from its first bytes; anything else is taken as an uncompressed tar.
MAGIC: dict[bytes, Compression] = {
    b"\x1f\x8b": Compression.GZIP,
    b"\x28\xb5\x2f\xfd": Compression.ZSTD,
}
MAGIC_BYTES = max(len(magic) for magic in MAGIC)


def sniff_compression(head: bytes) -> Compression:
    """The compression of a stream starting with ``head`` (at least MAGIC_BYTES of it)."""
    for magic, compression in MAGIC.items():
        if head.startswith(magic):
            return compression
    return Compression.NONE


# The media type ocifs.ocibuild writes for a layer stored each way (and the one a
# docker-archive layer is given once its compression is known from its bytes).
OCI_LAYER_TYPE: dict[Compression, str] = {
    Compression.NONE: OCI_LAYER_TAR,
    Compression.GZIP: OCI_LAYER_GZIP,
    Compression.ZSTD: OCI_LAYER_ZSTD,
}
