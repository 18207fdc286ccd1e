"""Exceptions that carry a one-line message meant for the user.

Everything the image can get wrong (layout, blobs, compression, tar, merge) is raised as an
``OcifsError`` subclass; the command line prints ``str(error)`` as one line and exits non-zero.
"""


class OcifsError(Exception):
    """A problem with the input, reported to the user as one line."""


class LayoutError(OcifsError):
    """The image layout, a descriptor, a JSON document or a blob is wrong (R, B1, B2)."""


class TarFormatError(OcifsError):
    """A layer's tar stream is malformed (B4); the message names the byte offset and entry."""


class CompressionError(OcifsError):
    """A layer's compressed stream is damaged (B3)."""


class MergeError(OcifsError):
    """An entry cannot be applied to the merged tree (P, W7, H3, M10)."""


class LayerError(OcifsError):
    """Any of the above, prefixed with the layer (index and digest) it came from."""
