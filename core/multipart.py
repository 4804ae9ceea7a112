"""Media types and ``multipart/related`` bodies read incrementally (RFC 9110 8.3.1, RFC 2046
5.1.1, RFC 2387): STOW-RS requests on both of radcloud's doors (the API's route,
``serving.api.routes.stow``, and the gateway's own, ``dicom_gateway.stow_door``) and WADO-RS
answers read by the archive seam (:mod:`core.archive._multipart`).

Nothing here knows about DICOM or HTTP frameworks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BodyPart",
    "MultipartError",
    "MultipartReader",
    "parse_media_type",
]

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"\s*({_TCHARS})\s*/\s*({_TCHARS})\s*")
_PARAMETER = re.compile(rf';\s*({_TCHARS})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))\s*')
_QUOTED_PAIR = re.compile(r"\\(.)")
_BOUNDARY_MAX = 200  # RFC 2046 allows 70; be lenient, but bounded
_HEADERS_MAX = 16 * 1024
_PADDING_MAX = 1024
_HEAD_BYTES = 64 * 1024


class MultipartError(ValueError):
    """A ``multipart`` body (or its media type) is malformed; the message says where."""


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into its media type and parameters (RFC 9110 8.3.1).

    Parameters
    ----------
    value
        E.g. ``multipart/related; type="application/dicom"; boundary=abc``.

    Returns
    -------
    tuple[str, dict[str, str]]
        The lower-cased ``type/subtype`` and the parameters, names lower-cased, values unquoted.

    Raises
    ------
    MultipartError
        ``value`` does not start with a ``type/subtype``, or a parameter cannot be parsed.
    """
    match = _MEDIA_TYPE.match(value)
    if match is None:
        raise MultipartError(f'media type "{value}" is not of the form type/subtype')
    media_type = f"{match.group(1)}/{match.group(2)}".lower()
    params: dict[str, str] = {}
    position = match.end()
    while position < len(value):
        param = _PARAMETER.match(value, position)
        if param is None:
            if not value[position:].strip(" \t;"):
                break
            raise MultipartError(f'cannot parse the parameters of media type "{value}"')
        name, quoted, bare = param.groups()
        params[name.lower()] = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else bare
        position = param.end()
    return media_type, params


@dataclass(frozen=True)
class BodyPart:
    """One part of a multipart body.

    Attributes
    ----------
    headers
        The part's header fields, names lower-cased.
    data
        The whole content, or only its first bytes when ``truncated``.
    size
        The content's full length in bytes.
    truncated
        ``True`` when the content was longer than the reader's ``max_part_bytes``.
    """

    headers: Mapping[str, str]
    data: bytes
    size: int
    truncated: bool = False

    @property
    def content_type(self) -> str | None:
        """The part's media type (lower-cased, without parameters); ``None`` when absent.

        Raises
        ------
        MultipartError
            The part's ``Content-Type`` cannot be parsed.
        """
        value = self.headers.get("content-type")
        return parse_media_type(value)[0] if value else None


@dataclass
class _PartBuilder:
    headers: dict[str, str]
    max_bytes: int
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    truncated: bool = False

    def append(self, chunk: bytes | bytearray) -> None:
        self.size += len(chunk)
        if not self.truncated and self.size > self.max_bytes:
            self.truncated = True
            del self.data[_HEAD_BYTES:]
        if self.truncated:
            self.data += chunk[: max(0, _HEAD_BYTES - len(self.data))]
        else:
            self.data += chunk

    def build(self) -> BodyPart:
        return BodyPart(self.headers, bytes(self.data), self.size, self.truncated)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    lines: list[str] = []
    for raw in block.decode("latin-1").split("\r\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += " " + raw.strip()  # obsolete line folding (RFC 5322 2.2.3)
        elif raw:
            lines.append(raw)
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f'part header line "{line[:80]}" has no "name: value" form')
        headers[name.strip().lower()] = value.strip()
    return headers


class MultipartReader:
    """Split a multipart body into parts as its bytes arrive, keeping one part in memory.

    Feed the body in chunks of any size with :meth:`feed`, then call :meth:`close`. A preamble
    before the first delimiter and an epilogue after the last are ignored (RFC 2046 5.1.1).
    Content longer than ``max_part_bytes`` is counted but not kept (only its first 64 KiB),
    so one oversized part cannot exhaust memory.

    Parameters
    ----------
    boundary
        The ``boundary`` parameter of the body's media type.
    max_part_bytes
        Largest part content kept whole.

    Raises
    ------
    MultipartError
        The boundary is empty or too long.
    """

    def __init__(self, boundary: str, max_part_bytes: int) -> None:
        if not boundary or len(boundary) > _BOUNDARY_MAX or "\r" in boundary or "\n" in boundary:
            raise MultipartError(f'boundary "{boundary[:80]}" is empty, too long or has a newline')
        self._dash_boundary = b"--" + boundary.encode("latin-1", errors="replace")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._max_part_bytes = max_part_bytes
        self._buffer = bytearray()
        self._state = "preamble"
        self._at_start = True
        self._part: _PartBuilder | None = None
        self.parts_read = 0

    def feed(self, chunk: bytes) -> list[BodyPart]:
        """Add body bytes; returns the parts completed by them, in order.

        Raises
        ------
        MultipartError
            The body is malformed.
        """
        if self._state == "epilogue":
            return []
        self._buffer += chunk
        return list(self._drain())

    def close(self) -> list[BodyPart]:
        """Finish the body; returns any part completed by its last bytes.

        Raises
        ------
        MultipartError
            The body has no delimiter, or ends before its closing delimiter.
        """
        parts = list(self._drain())
        if self._state == "preamble":
            raise MultipartError("no multipart boundary delimiter found in the body")
        if self._state != "epilogue":
            raise MultipartError(
                f"body ends inside part {self.parts_read + 1}, before the closing delimiter"
            )
        return parts

    # -- the state machine -------------------------------------------------------------------

    def _drain(self) -> Iterator[BodyPart]:
        while True:
            if self._state == "preamble":
                progressed = self._skip_preamble()
            elif self._state == "after_delimiter":
                progressed = self._read_delimiter_line()
            elif self._state == "headers":
                progressed = self._read_headers()
            elif self._state == "body":
                done = self._read_body()
                if done is not None:
                    yield done
                    continue
                progressed = False
            else:  # epilogue
                self._buffer.clear()
                progressed = False
            if not progressed:
                return

    def _skip_preamble(self) -> bool:
        if self._at_start and self._buffer.startswith(self._dash_boundary):
            index = 0
        else:
            found = self._buffer.find(self._delimiter)
            index = found + 2 if found >= 0 else -1
        if index < 0:
            if self._at_start and self._dash_boundary.startswith(bytes(self._buffer)):
                return False  # the body may yet start with the delimiter
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
                self._at_start = False
            return False
        del self._buffer[: index + len(self._dash_boundary)]
        self._state = "after_delimiter"
        return True

    def _read_delimiter_line(self) -> bool:
        """After a delimiter: ``--`` closes the body, else optional padding and CRLF."""
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = "epilogue"
            return True
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > _PADDING_MAX:
                raise MultipartError("a boundary delimiter is not followed by a line break")
            return False
        if self._buffer[:end].strip(b" \t"):
            raise MultipartError("unexpected characters after a boundary delimiter")
        del self._buffer[: end + 2]
        self._state = "headers"
        return True

    def _read_headers(self) -> bool:
        if self._buffer.startswith(b"\r\n"):
            block, consumed = b"", 2
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _HEADERS_MAX:
                    raise MultipartError(
                        f"part {self.parts_read + 1} has more than {_HEADERS_MAX} bytes of headers"
                    )
                return False
            block, consumed = bytes(self._buffer[:end]), end + 4
        self._part = _PartBuilder(_parse_headers(block), self._max_part_bytes)
        del self._buffer[:consumed]
        self._state = "body"
        return True

    def _read_body(self) -> BodyPart | None:
        part = self._part
        assert part is not None  # noqa: S101 - set when entering the body state
        index = self._buffer.find(self._delimiter)
        if index < 0:
            safe = len(self._buffer) - (len(self._delimiter) - 1)
            if safe > 0:
                part.append(self._buffer[:safe])
                del self._buffer[:safe]
            return None
        part.append(self._buffer[:index])
        del self._buffer[: index + len(self._delimiter)]
        self._part = None
        self._state = "after_delimiter"
        self.parts_read += 1
        return part.build()
