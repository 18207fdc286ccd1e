"""Resolve ``LAYOUT[:REF|@DIGEST]`` in an OCI image layout to a manifest, its config and layers.

STUB: the interface below is fixed; the resolver is being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LayerRef:
    """A layer of the resolved image, checked for media type and presence, not yet indexed."""

    index: int  # position in manifest.layers, 0 = lowest
    digest: str  # "sha256:<hex>" (or sha512), grammar-checked
    size: int  # descriptor size; the blob's size on disk was checked against it
    media_type: str
    compression: str  # "none", "gzip" or "zstd"
    diff_id: str  # from config.rootfs.diff_ids[index], grammar-checked
    path: Path  # the blob file inside the layout

    def describe(self) -> str:
        """How error messages name the layer: 'layer 2 (sha256:abcd...)'."""
        return f"layer {self.index} ({self.digest})"


@dataclass(frozen=True)
class ResolvedImage:
    layout: Path
    manifest_digest: str
    config_digest: str
    config: dict[str, Any]
    platform: str | None  # "os/arch[/variant]" of the chosen manifest when known
    layers: tuple[LayerRef, ...]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse 'os/arch[/variant]'; raises LayoutError on anything else."""
        raise NotImplementedError

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine in OCI terms (linux/amd64, linux/arm64/v8, ...)."""
        raise NotImplementedError


def split_image_arg(arg: str) -> tuple[Path, str | None, str | None]:
    """Split 'LAYOUT[:REF|@DIGEST]' into (layout path, ref or None, digest or None)."""
    raise NotImplementedError


def resolve(
    layout: Path,
    ref: str | None = None,
    digest: str | None = None,
    platform: Platform | None = None,
) -> ResolvedImage:
    """Resolve the image; raises LayoutError with one clear line on any problem."""
    raise NotImplementedError
