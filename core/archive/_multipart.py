"""``multipart/related`` answers of WADO-RS (PS3.18 8.6.1, RFC 2387) read part by part as
their bytes arrive (private to :mod:`core.archive`).

Only one part is held at a time: a study of many instances is never buffered whole.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable, Iterator

from core.archive.exceptions import ArchiveError
from core.multipart import MultipartError, MultipartReader, parse_media_type

__all__ = ["boundary_of", "encode_parts", "iter_parts"]


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` media type.

    Raises
    ------
    ArchiveError
        ``content_type`` is not multipart or names no boundary.
    """
    try:
        media_type, params = parse_media_type(content_type)
    except MultipartError:
        media_type, params = "", {}
    if not media_type.startswith("multipart/") or not params.get("boundary"):
        raise ArchiveError(f'expected a multipart answer with a boundary, got "{content_type}"')
    return params["boundary"].encode("latin-1")


def iter_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body given as ``chunks``: each part's headers (names
    lower-cased) and body, yielded as soon as its closing delimiter has arrived
    (:class:`core.multipart.MultipartReader`, which STOW-RS requests are read with too).

    Raises
    ------
    ArchiveError
        The body is malformed or ends before its closing delimiter.
    """
    try:
        reader = MultipartReader(boundary.decode("latin-1"), sys.maxsize)
        for chunk in chunks:
            for part in reader.feed(chunk):
                yield dict(part.headers), part.data
        for part in reader.close():
            yield dict(part.headers), part.data
    except MultipartError as exc:
        raise ArchiveError(f"the multipart answer is malformed: {exc}") from exc


def encode_parts(bodies: Iterable[bytes], media_type: str) -> tuple[str, bytes]:
    """A ``multipart/related`` body of ``bodies``, each of ``media_type`` (a STOW-RS request,
    PS3.18 10.5.1.2); returns its ``Content-Type`` and the body."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode()
    pieces: list[bytes] = []
    for data in bodies:
        pieces += (head, data, b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return f'multipart/related; type="{media_type}"; boundary={boundary}', b"".join(pieces)
