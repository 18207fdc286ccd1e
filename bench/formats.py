"""The image formats measured and what differs between them: one table, ``FORMATS``.

Every image is first built as gzip (``images.build_image``); the other formats are derived
from it with ``skopeo copy`` (``images.derive_image``), so that each holds the very same tree
as its gzip image and was written the way the container tools write it. For each format the
table says how it is derived, what its first mount is held against (the floor: the least work
any mount of it must do), its targets, and whether ratarmount can be compared on it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ocifs.mediatypes import OCI_LAYER_ZSTD

# ocifs, ratarmount, floor -> met or not, None when it cannot be told
Check = Callable[[float, float | None, float | None], bool | None]


# Issue 9's target for a gzip image's first mount: 0.4x of gzip -dc (inflate at ISA-L's speed
# on the critical path, hashing and the tar scan beside it), and ahead of ratarmount.
GZIP_FIRST_RATIO = 0.4


def below_floor_share_and_ratarmount(o: float, r: float | None, f: float | None) -> bool | None:
    return None if f is None or r is None else o <= GZIP_FIRST_RATIO * f and o < r


def below_floor(o: float, r: float | None, f: float | None) -> bool | None:
    return None if f is None else o <= f


# SHA-256 of a file in 1 MiB reads through hashlib (OpenSSL), as ocifs hashes a plain layer.
SHA256_SCRIPT = (
    "import hashlib, sys\n"
    "digest = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb', buffering=0) as file:\n"
    "    while chunk := file.read(1 << 20):\n"
    "        digest.update(chunk)\n"
    "print(digest.hexdigest())\n"
)


def zstd_problem(layer: dict[str, Any]) -> str:
    if layer["media_type"] != OCI_LAYER_ZSTD:
        return f"media type {layer['media_type']}, not {OCI_LAYER_ZSTD}"
    return ""


def not_one_frame(layer: dict[str, Any]) -> str:
    """What makes a layer other than one zstd frame ("" when it is one)."""
    frames = layer["zstd"]
    if frames["frames"] != 1 or frames["skippable_frames"]:
        return (
            f"{frames['frames']} frames and {frames['skippable_frames']} skippable, not one frame"
        )
    return zstd_problem(layer)


def not_chunked(layer: dict[str, Any]) -> str:
    """What makes a layer other than zstd:chunked: the TOC annotations, frames, skippable ones."""
    names = {
        key.rsplit(".", 1)[-1] for key in layer.get("annotations", {}) if ".zstd-chunked." in key
    }
    if not {"manifest-checksum", "manifest-position"} <= names:
        return "no zstd-chunked manifest-checksum and manifest-position annotations"
    frames = layer["zstd"]
    if frames["frames"] < 2 or not frames["skippable_frames"]:
        return f"{frames['frames']} frames and {frames['skippable_frames']} skippable, not chunked"
    return zstd_problem(layer)


@dataclass(frozen=True)
class Format:
    name: str  # build.json's "format"
    suffix: str  # the image's name is its gzip image's name + suffix: "large-zstd"
    layers: str  # what its layers are, for the headings: "2 gzip layers"
    archive: bool  # a tarball mounted in place (else an OCI layout directory)
    floor: str  # the first mount's floor: its results key, and the command run on each blob
    floor_argv: tuple[str, ...]
    first_target: str  # the first mount's target, "" for none
    first_check: Check | None
    random_judged: bool  # whether the random 4 KiB reads have the "< 1 ms" target
    ratarmount: str  # why ratarmount is not compared on it; "" when it reads the blobs
    stored: str  # what its blob bytes are, for the headings: "compressed"
    skopeo: tuple[str, ...] | None  # ``skopeo copy`` options deriving it; None: built itself
    check_layer: Callable[[dict[str, Any]], str] | None  # what is wrong with a derived layer
    decompress: tuple[str, ...]  # the command writing a blob's tar to stdout; (): plain tar
    # Why the tar stream its writer wrote may differ from the config's diff_id, when it is
    # known to: the bench then writes the config with the stream's own digests (and says so)
    # rather than measuring an image no verifying mount can take; "": a difference is an error.
    diff_id_excuse: str
    floor_name: str = ""  # what the floor is called, when not its command line

    @property
    def floor_label(self) -> str:
        return self.floor_name or " ".join(self.floor_argv)


FORMATS: dict[str, Format] = {
    format.name: format
    for format in (
        Format(
            name="gzip",
            suffix="",
            layers="gzip layers",
            archive=False,
            floor="gzip",
            floor_argv=("gzip", "-dc"),
            first_target=f"<= {GZIP_FIRST_RATIO}x gzip -dc and < ratarmount",
            first_check=below_floor_share_and_ratarmount,
            random_judged=True,
            ratarmount="",
            stored="compressed",
            skopeo=None,
            check_layer=None,
            decompress=("gzip", "-dc"),
            diff_id_excuse="",
        ),
        # skopeo's zstd, not ``zstd -3``: it is what podman, buildah and skopeo push (the
        # klauspost encoder of containers/image). Measured on the large image (2 layers,
        # 3.2 GB of tar): both write one frame per layer with an XXH64 checksum and no content
        # size; skopeo with an 8 MiB window, zstd -3 with 2 MiB; sizes within 1% (801 MB and
        # 799 MB) and the same zstd -dc time (2.9 s). skopeo took 19 s, gzip -dc | zstd -3 17 s.
        Format(
            name="zstd",
            suffix="-zstd",
            layers="zstd layers (one frame each)",
            archive=False,
            floor="zstd",
            floor_argv=("zstd", "-dc"),
            first_target="<= 1.0x zstd -dc",
            first_check=below_floor,
            random_judged=False,  # one long frame: every read decodes from its start; reported
            ratarmount="",  # ratarmount 1.3 reads zstd through indexed_zstd
            stored="compressed",
            skopeo=("--dest-compress-format", "zstd"),
            check_layer=not_one_frame,
            decompress=("zstd", "-dc"),
            diff_id_excuse="",
        ),
        # Debian's skopeo 1.9.3 really writes zstd:chunked (checked by images.derive_image on
        # every build): the layer's media type stays tar+zstd; a frame per regular file's
        # content and frames for the tar headers between them (large: 374,006 frames for
        # 184,070 entries, the biggest 783 KB); at the end a skippable frame holding the TOC
        # (zstd-compressed JSON, 3.5 MB for 19.7 MB) and a skippable footer frame; and on the
        # layer descriptor the older annotation names
        # io.containers.zstd-chunked.manifest-checksum and ...manifest-position
        # ("offset:length:uncompressed length:type" of the TOC). Every frame has an XXH64
        # checksum and a 32 MiB window; the blobs are 37% bigger than one frame's (1,098 MB
        # against 801 MB for large), and zstd -dc of them 4.5x slower (13.7 s against 3.05 s).
        # It also cuts the tar stream short (see diff_id_excuse).
        Format(
            name="zstd:chunked",
            suffix="-chunked",
            layers="zstd:chunked layers",
            archive=False,
            floor="zstd",
            floor_argv=("zstd", "-dc"),
            first_target="<= 1.0x zstd -dc",
            first_check=below_floor,
            random_judged=True,
            ratarmount="",
            stored="compressed",
            skopeo=("--dest-compress-format", "zstd:chunked"),
            check_layer=not_chunked,
            decompress=("zstd", "-dc"),
            diff_id_excuse=(
                "skopeo 1.9.3 writes the zstd:chunked tar stream only up to its end-of-archive "
                "blocks, dropping the zero padding GNU tar adds after them, but keeps the "
                "input's diff_id (as in containers/container-libs#391)"
            ),
        ),
        # skopeo's docker-archive holds the layers as plain tar (<diff_id>.tar, with the
        # classic <id>/layer.tar symlinks, manifest.json and repositories): a verified mount
        # must at least hash every byte once, hence the SHA-256 of the whole tarball as ocifs
        # hashes (hashlib, OpenSSL, 1 MiB reads). Not coreutils' sha256sum: it has no SHA-NI,
        # 9.1 s for large-docker's 3.2 GB warm against 2.2 s; nor ``openssl dgst``: its 8 KiB
        # reads made it about twice as slow cold (0.52-0.66 s for debian-docker's 417 MB
        # against 0.31 s).
        Format(
            name="docker-archive",
            suffix="-docker",
            layers="tar layers in a docker-archive tarball",
            archive=True,
            floor="sha256",
            floor_argv=(sys.executable, "-c", SHA256_SCRIPT),
            first_target="",
            first_check=None,
            random_judged=True,
            ratarmount="n/a: ratarmount mounts the tarball's own members, not the image",
            stored="in the tarball",
            skopeo=(),
            check_layer=None,  # each member hashes to its diff_id: it is the plain tar
            decompress=(),
            diff_id_excuse="",
            floor_name="sha256 (hashlib)",
        ),
    )
}
BASE_FORMAT = FORMATS["gzip"]


def format_of(info: dict[str, object]) -> Format:
    """The format of a built image; build.json of gzip images built before this had none."""
    return FORMATS[str(info.get("format", BASE_FORMAT.name))]
