"""Ctrl-C and SIGTERM as one exception, held back while a step must finish whole.

A signal that lands between an optimizer update and the bookkeeping that records it
would leave weights one update ahead of the loop position saved beside them, so that a
resumed run applies that update twice. :class:`InterruptGuard` turns SIGINT and SIGTERM
into :class:`Interrupted`, except inside :meth:`InterruptGuard.deferred`, where the
signal waits until the block has finished. Code that does not own a guard marks such a
block with :func:`whole` (an image and its caption file, written as a pair).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """A SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill, ``timeout``)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for TERM)."""
        return 128 + self.signum


class InterruptGuard:
    """While entered, SIGINT and SIGTERM raise :class:`Interrupted` (outside the main
    thread, where Python cannot install handlers, it changes nothing)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a signal does not cut short: it is raised when the block ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                raise Interrupted(signum)


# The guards entered and not yet left, innermost last: its handler is the one installed.
_ACTIVE: list[InterruptGuard] = []


def whole() -> AbstractContextManager:
    """A block that a signal does not cut short, under whichever guard is handling signals
    (nothing changes where none is, or off the main thread, where signals never land)."""
    if _ACTIVE and threading.current_thread() is threading.main_thread():
        return _ACTIVE[-1].deferred()
    return nullcontext()
