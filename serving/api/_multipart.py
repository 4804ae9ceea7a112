"""URL rewriting of streamed DICOMweb answers (the proxy of ``routes/dicomweb.py`` and
federated WADO-RS); the media types and ``multipart`` bodies are :mod:`core.multipart`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["UrlRewriter"]


class UrlRewriter:
    """Replace URL prefixes in a streamed text body, also where one straddles two chunks.

    Parameters
    ----------
    replacements
        ``{old: new}`` byte strings; identical pairs and empty keys are ignored.
    """

    def __init__(self, replacements: Mapping[bytes, bytes]) -> None:
        self._map = {old: new for old, new in replacements.items() if old and old != new}
        keys = sorted(self._map, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(key) for key in keys)) if keys else None
        self._keep = max((len(key) for key in keys), default=1) - 1

    def rewrite(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` with every occurrence of a key replaced by its value."""
        if self._pattern is None:
            yield from chunks
            return
        tail = b""
        for chunk in chunks:
            data = tail + chunk
            out: list[bytes] = []
            position = 0
            for match in self._pattern.finditer(data):
                out.append(data[position : match.start()])
                out.append(self._map[match.group()])
                position = match.end()
            keep_from = max(position, len(data) - self._keep)
            out.append(data[position:keep_from])
            tail = data[keep_from:]
            piece = b"".join(out)
            if piece:
                yield piece
        if tail:
            yield tail
