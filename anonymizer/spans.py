"""A stream whose bytes lie in pieces of a buffer: fragments of encapsulated pixel data,
payloads of transport stream packets. Edits that keep lengths are found in the joined
stream and written back through :meth:`Spans.ranges`."""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

#: An edit: where, and the bytes that go there (the same number of bytes as it replaces).
Patch = tuple[int, bytes]


class Spans:
    """Bytes of one logical stream (a frame, a video, an elementary stream) that lie in
    ``value`` as ordered spans (fragments, transport packets' payloads), read as one."""

    def __init__(self, value: bytes | memoryview, spans: list[tuple[int, int]]) -> None:
        self.value = value
        self.spans = spans
        #: stream offset of each span's first byte, then the stream's size
        self.starts = [0, *accumulate(end - start for start, end in spans)]
        self.size = self.starts[-1]

    def contiguous(self) -> bytes | memoryview:
        """The stream's bytes in one piece: a view of ``value`` when they are one span (the
        usual case for a frame, nothing copied), else a copy joined across the spans."""
        if len(self.spans) == 1:
            start, end = self.spans[0]
            return memoryview(self.value)[start:end]
        return b"".join(self.value[start:end] for start, end in self.spans)

    def read(self, pos: int, count: int) -> bytes:
        """``count`` bytes at stream offset ``pos`` (fewer at the end of the stream)."""
        out = bytearray()
        for start, end in self.ranges(pos, count):
            out += self.value[start:end]
        return bytes(out)

    def ranges(self, pos: int, count: int) -> list[tuple[int, int]]:
        """The ``value`` ranges that hold stream bytes ``pos`` to ``pos + count``."""
        ranges = []
        index = bisect_right(self.starts, pos) - 1  # the span holding pos (thousands of packets)
        while count > 0 and 0 <= index < len(self.spans):
            start, end = self.spans[index]
            at = start + pos - self.starts[index]
            take = min(end - at, count)
            ranges.append((at, at + take))
            count -= take
            pos += take
            index += 1
        return ranges

    def placed(self, patches: list[Patch]) -> list[Patch]:
        """``patches`` of the stream as patches of ``value``, cut where spans end."""
        out = []
        for at, new in patches:
            for start, end in self.ranges(at, len(new)):
                out.append((start, new[: end - start]))
                new = new[end - start :]
        return out
