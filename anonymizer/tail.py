"""The end of an output that is still in its source file: native pixel data.

A file-to-file run reads only the head of a large instance; its native pixel data goes
from the source file to the output in the kernel, never through Python. When a filter says
where the pixels show text (:mod:`anonymizer.screening`), the rectangles are byte ranges of
that data: they are written as zeros instead of copied, so a cine loop's banner is blanked
without reading the loop. Every writer of an output takes a :class:`SourceTail` as a whole,
zeros included; there is no way to copy its bytes that skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

#: A run of bytes written as zeros: (start, length), relative to the tail's first byte.
ZeroRun = tuple[int, int]


@dataclass(frozen=True)
class SourceTail:
    """``length`` bytes of the source file from ``offset``, with ``zeros`` (sorted,
    disjoint, inside the tail) written as zeros instead of copied."""

    offset: int
    length: int
    zeros: tuple[ZeroRun, ...] = ()

    def pieces(self) -> Iterator[tuple[int, int, bool]]:
        """``(position in the tail, length, copied)`` from start to end: the copied
        pieces (True) and the zero runs between them (False)."""
        position = 0
        for start, length in self.zeros:
            if start > position:
                yield position, start - position, True
            yield start, length, False
            position = start + length
        if position < self.length:
            yield position, self.length - position, True


_ZERO_BYTES = bytes(1 << 20)


def zero_bytes(length: int) -> bytes | memoryview:
    """``length`` zero bytes: a view of one shared buffer where that is long enough."""
    if length <= len(_ZERO_BYTES):
        return memoryview(_ZERO_BYTES)[:length]
    return bytes(length)
