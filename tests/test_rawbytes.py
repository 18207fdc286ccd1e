"""rawbytes: fresh bytes filled from C, and joins of block pieces, equal plain Python's."""

from __future__ import annotations

import ctypes
import os

import pytest

from ocifs import rawbytes


def test_layout_holds_on_cpython() -> None:
    """The suite runs on CPython, where the fast paths must be the ones taken."""
    assert rawbytes.LAYOUT_HOLDS


def test_new_bytes_filled_from_c_is_what_was_written() -> None:
    payload = os.urandom(300_000)
    out, address = rawbytes.new_bytes(len(payload))
    ctypes.memmove(address, payload, len(payload))
    assert type(out) is bytes
    assert len(out) == len(payload)
    assert out == payload
    assert rawbytes.address(out) == address


@pytest.mark.parametrize("size", [0, -1])
def test_new_bytes_refuses_an_empty_size(size: int) -> None:
    """b"" is a shared singleton: writing into it would change every empty bytes."""
    with pytest.raises(ValueError):
        rawbytes.new_bytes(size)


def test_join_equals_slicing_for_large_replies() -> None:
    blocks = [os.urandom(256 << 10) for _ in range(4)]
    pieces = [(blocks[0], 1000, len(blocks[0])), (blocks[1], 0, len(blocks[1]))]
    pieces += [(blocks[2], 0, len(blocks[2])), (blocks[3], 0, 12_345)]
    expected = b"".join(block[start:end] for block, start, end in pieces)
    assert sum(end - start for _, start, end in pieces) >= rawbytes.JOIN_MIN
    assert rawbytes.join(pieces) == expected


def test_join_of_small_replies_and_other_buffers_falls_back_to_the_same_bytes() -> None:
    """Below JOIN_MIN, or with a block that is not bytes (no address to take), the join is
    Python's, with the same result."""
    small = [(b"abcdef", 1, 4), (b"ghij", 0, 2)]
    assert rawbytes.join(small) == b"bcdgh"
    big = os.urandom(200_000)
    mixed: list[rawbytes.Piece] = [(big, 10, 150_000), (bytearray(b"xyz" * 40_000), 3, 90_000)]  # type: ignore[list-item]
    expected = big[10:150_000] + (b"xyz" * 40_000)[3:90_000]
    assert rawbytes.join(mixed) == expected


def test_join_of_a_bytes_subclass_does_not_take_its_address() -> None:
    """A subclass may carry a dict or another layout: only exact bytes are copied by address."""

    class Tagged(bytes):
        pass

    block = Tagged(os.urandom(100_000))
    assert rawbytes.join([(block, 5, 99_000)]) == bytes(block)[5:99_000]


def test_a_reply_nothing_holds_is_reused_with_its_new_bytes_and_no_stale_hash() -> None:
    replies = rawbytes.ReplyBuffers(keep=2)
    first, address = replies.take(100_000)
    ctypes.memmove(address, b"a" * 100_000, 100_000)
    hash(first)  # cached in the object: a reuse must not keep it
    first_id = id(first)
    del first
    again, address = replies.take(100_000)
    ctypes.memmove(address, b"b" * 100_000, 100_000)
    assert id(again) == first_id
    assert replies.reused == 1
    assert again == b"b" * 100_000
    assert hash(again) == hash(b"b" * 100_000)
    assert {again: 1}[b"b" * 100_000] == 1


def test_a_reply_still_held_is_never_written_again() -> None:
    """A reply in flight, a view of it or a reader's reference: each keeps its bytes."""
    replies = rawbytes.ReplyBuffers(keep=4)
    held, address = replies.take(70_000)
    ctypes.memmove(address, b"x" * 70_000, 70_000)
    view_of, address = replies.take(70_000)
    ctypes.memmove(address, b"y" * 70_000, 70_000)
    view = memoryview(view_of)
    del view_of
    third, address = replies.take(70_000)
    ctypes.memmove(address, b"z" * 70_000, 70_000)
    assert third is not held
    assert third is not view.obj
    assert held == b"x" * 70_000
    assert bytes(view) == b"y" * 70_000
    assert replies.reused == 0


def test_reply_buffers_keep_at_most_their_bound_and_give_up_free_ones_of_other_sizes() -> None:
    replies = rawbytes.ReplyBuffers(keep=2)
    a, _ = replies.take(80_000)
    b, _ = replies.take(90_000)
    c, _ = replies.take(100_000)  # no room, none free: not kept
    assert len(replies.buffers) == 2
    assert all(buffer is not c for buffer in replies.buffers)
    del a
    d, _ = replies.take(110_000)  # a's slot is free: d takes it
    assert len(replies.buffers) == 2
    assert any(buffer is d for buffer in replies.buffers)
    assert any(buffer is b for buffer in replies.buffers)


def test_join_reuses_a_reply_once_it_is_dropped() -> None:
    block = os.urandom(300_000)
    before = rawbytes.REPLIES.reused
    first = rawbytes.join([(block, 0, 200_000)])
    del first
    second = rawbytes.join([(block, 100_000, 300_000)])
    assert second == block[100_000:300_000]
    assert rawbytes.REPLIES.reused == before + 1
