"""``multipart/related`` answers of WADO-RS (PS3.18 8.6.1, RFC 2387) read part by part as
their bytes arrive (private to :mod:`core.archive`).

Only one part is held at a time: a study of many instances is never buffered whole.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator

from core.archive.exceptions import ArchiveError

__all__ = ["boundary_of", "encode_parts", "iter_parts"]

_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_HEADERS_MAX = 16 * 1024


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` media type.

    Raises
    ------
    ArchiveError
        ``content_type`` is not multipart or names no boundary.
    """
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().lstrip().startswith("multipart/") or match is None:
        raise ArchiveError(f'expected a multipart answer with a boundary, got "{content_type}"')
    return (match.group(1) or match.group(2)).encode("latin-1")


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def iter_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body given as ``chunks``: each part's headers (names
    lower-cased) and body, yielded as soon as its closing delimiter has arrived.

    Raises
    ------
    ArchiveError
        The body ends before its closing delimiter, or a part has no header block.
    """
    delimiter = b"\r\n--" + boundary
    stream = iter(chunks)
    buffer = bytearray(b"\r\n")  # the first delimiter may open the body without a CRLF
    searched = 0
    started = False
    while True:
        index = buffer.find(delimiter, searched)
        if index < 0:
            searched = max(0, len(buffer) - len(delimiter))
            chunk = next(stream, None)
            if chunk is None:
                raise ArchiveError("the multipart answer ended before its closing delimiter")
            buffer += chunk
            continue
        if started:
            part = bytes(buffer[:index])
            head, sep, body = part.partition(b"\r\n\r\n")
            if not sep:
                if len(part) > _HEADERS_MAX or part.strip():
                    raise ArchiveError("a part of the multipart answer has no header block")
                head, body = b"", b""
            yield _headers(head), body
        started = True
        del buffer[: index + len(delimiter)]
        searched = 0
        while len(buffer) < 2:  # "--" closes the body, CRLF opens the next part
            chunk = next(stream, None)
            if chunk is None:
                raise ArchiveError("the multipart answer ended inside a delimiter")
            buffer += chunk
        if buffer[:2] == b"--":
            return
        line_end = buffer.find(b"\r\n")  # transport padding may follow the delimiter
        while line_end < 0:
            chunk = next(stream, None)
            if chunk is None:
                raise ArchiveError("the multipart answer ended inside a delimiter")
            buffer += chunk
            line_end = buffer.find(b"\r\n")
        # keep the CRLF: a part with no headers starts with it, so the block separator matches
        del buffer[:line_end]


def encode_parts(bodies: Iterable[bytes], media_type: str) -> tuple[str, bytes]:
    """A ``multipart/related`` body of ``bodies``, each of ``media_type`` (a STOW-RS request,
    PS3.18 10.5.1.2); returns its ``Content-Type`` and the body."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for data in bodies:
        body += f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode()
        body += data
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f'multipart/related; type="{media_type}"; boundary={boundary}', bytes(body)
