"""Exceptions that carry a one-line message meant for the user, and how they quote names.

Everything the image can get wrong (layout, blobs, compression, tar, merge) is raised as an
``OcifsError`` subclass; the command line prints ``str(error)`` as one line and exits non-zero.
A name or a value that comes from the image (an entry path, a link target, a ref, a media type,
a member name) is quoted with ``show``, which keeps the line short however long the name is.
"""

from collections.abc import Callable

SHOW_MAX = 120  # characters of a name a message quotes whole
SHOW_KEEP = 50  # characters kept at each end of a longer one


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


def show(value: object) -> str:
    """A name or value from the image, quoted for a message or a log line: on one line
    (undecodable bytes and control characters escaped), and when that is over SHOW_MAX
    characters, its start and its end with how long it was: ``'aaaa…zzzz' (300000 bytes)``
    (the whole of a 300 KB name would make a line no one can read). Bytes and strings are
    quoted; anything else (a JSON number, list, None) is written as Python writes it."""
    if isinstance(value, (bytes, str)):
        raw = value if isinstance(value, bytes) else _utf8(value)
        text = raw.decode("utf-8", "backslashreplace")
        size = f"{len(raw)} bytes"
        quote: Callable[[str], str] = repr
    else:
        text = repr(value)
        size = f"{len(text)} characters"
        quote = str
    if len(text) <= SHOW_MAX:
        quoted = quote(text)
        if len(quoted) <= SHOW_MAX + 2:
            return quoted
    head = text[:SHOW_KEEP]
    while len(quote(head)) > SHOW_KEEP + 2:  # escapes take room: keep what fits
        head = head[:-1]
    tail = text[-SHOW_KEEP:]
    while len(quote(tail)) > SHOW_KEEP + 2:
        tail = tail[1:]
    quoted_head, quoted_tail = quote(head), quote(tail)
    if quote is repr and quoted_head[0] == quoted_tail[0]:  # one pair of quotes for both
        return f"{quoted_head[:-1]}…{quoted_tail[1:]} ({size})"
    return f"{quoted_head}…{quoted_tail} ({size})"


def _utf8(text: str) -> bytes:
    """``text`` as bytes; a name decoded with surrogateescape gets its own bytes back."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from JSON, say
        return text.encode("utf-8", "surrogatepass")
