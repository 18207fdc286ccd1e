"""Running the indexing pass of a first mount in a child process, so the daemon never holds it.

The daemon lives as long as the mount. A process that has indexed an image keeps much of the
pass's peak after it ends: small objects that survive are scattered over the heap's arenas,
which neither Python nor ``malloc_trim`` can then give back (a first mount of the large bench
image left 110-119 MB, a later mount of it 43 MB). So a first mount forks, the child indexes
and fills the cache, and the parent then loads the image from the cache as a later mount
would (a few tenths of a second more), in a heap that never saw the pass.

The child says what went wrong itself, on the same terminal, in the one line the command line
would print; the parent only passes its exit status on (``ChildFailed``). Ctrl-C at the
terminal reaches both; a SIGINT sent to the parent alone is passed to the child. The child
dies with the parent (``PR_SET_PDEATHSIG``), so a killed mount leaves no indexer behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ChildFailed(Exception):
    """The child has failed and said why; the command exits with ``status``, saying nothing."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the indexing process exited with status {status}")
        self.status = status


def run_apart(work: Callable[[], int]) -> None:
    """Run ``work`` in a child process and wait for it; ChildFailed if its status is not 0.

    ``work`` returns the exit status and reports its own errors (it must not raise; anything
    that still does is printed by the child with its traceback, status 1). Call it while the
    process has no other threads: only the calling one goes on in the child.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os._exit(child(work))
    try:
        _, status = os.waitpid(pid, 0)
    except KeyboardInterrupt:
        # The child has it too if it came from the terminal; it handles only the first.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise ChildFailed(code if code > 0 else 128 - code)


def child(work: Callable[[], int]) -> int:
    """The child's side: the exit status of ``work``, which never returns to the caller's
    code (the parent's stack is the child's too)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # kept ignored, as Python does
        signal.signal(signal.SIGINT, interrupt_once)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    try:
        return work()
    except BaseException:  # a bug, or --debug asking for the traceback
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def interrupt_once(signum: int, frame: FrameType | None) -> None:
    """SIGINT as Python's default handler, once: a second one (the terminal's and the
    parent's) must not interrupt the child while it reports the first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
