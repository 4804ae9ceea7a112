"""``core.multipart``: the one reader of ``multipart/related`` bodies, for STOW-RS requests on
both doors and the archive seam's WADO-RS answers (``core.archive._multipart``), and
``core.stow``: what both STOW-RS doors answer (no stack needed)."""

from __future__ import annotations

import pytest

from core.archive import ArchiveError
from core.archive._multipart import boundary_of, encode_parts, iter_parts
from core.ingest import FailureReason, StoreAnswer
from core.multipart import BodyPart, MultipartError, MultipartReader, parse_media_type
from core.stow import PartBatch, precheck, store_checked, store_response, stow_boundary

BOUNDARY = "b-7f"


def _body(*contents: bytes, content_type: str = "application/dicom") -> bytes:
    parts = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
        for data in contents
    )
    return b"preamble\r\n" + parts + f"--{BOUNDARY}--\r\nepilogue".encode()


def _read(body: bytes, chunk: int, limit: int = 1 << 20) -> list[BodyPart]:
    reader = MultipartReader(BOUNDARY, limit)
    parts: list[BodyPart] = []
    for start in range(0, len(body), chunk):
        parts += reader.feed(body[start : start + chunk])
    return parts + reader.close()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_parts_are_the_same_whatever_the_chunks(chunk: int) -> None:
    contents = [b"first", b"\r\n--b-7 almost a delimiter\r\n", b""]
    parts = _read(_body(*contents), chunk)
    assert [p.data for p in parts] == contents
    assert all(p.content_type == "application/dicom" for p in parts)


def test_an_oversized_part_is_counted_not_kept() -> None:
    [part] = _read(_body(b"x" * 200_000), 4096, limit=1000)
    assert part.truncated and part.size == 200_000 and len(part.data) <= 64 * 1024


def test_a_body_cut_short_or_without_delimiter_is_malformed() -> None:
    with pytest.raises(MultipartError, match="closing delimiter"):
        _read(_body(b"data")[:-30], 64)
    with pytest.raises(MultipartError, match="no multipart boundary"):
        _read(b"no parts at all", 64)


def test_media_types_of_stow_rs() -> None:
    assert parse_media_type('multipart/related; type="application/dicom"; boundary=x') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "x"},
    )
    assert stow_boundary('multipart/related; type="application/dicom"; boundary="a b"') == "a b"
    assert stow_boundary("multipart/related; boundary=x") == "x"  # type defaults to DICOM
    assert stow_boundary("multipart/related; type=image/jpeg; boundary=x") is None
    assert stow_boundary("application/dicom") is None
    assert stow_boundary("") is None


def test_the_archive_reads_wado_answers_with_the_same_reader() -> None:
    content_type, body = encode_parts([b"one", b"two"], "application/dicom")
    boundary = boundary_of(content_type)
    chunks = [body[i : i + 5] for i in range(0, len(body), 5)]
    parts = list(iter_parts(chunks, boundary))
    assert [data for _, data in parts] == [b"one", b"two"]
    assert parts[0][0]["content-type"] == "application/dicom"
    with pytest.raises(ArchiveError):
        list(iter_parts([body[:-8]], boundary))
    with pytest.raises(ArchiveError):
        boundary_of("application/json")


def test_prechecks_and_batches_keep_the_request_order() -> None:
    ok = BodyPart({"content-type": "application/dicom"}, b"a", 1)
    big = BodyPart({}, b"b", 5000, truncated=True)
    jpeg = BodyPart({"content-type": "image/jpeg"}, b"c", 1)
    assert precheck(big, 2, 1000) is not None
    assert precheck(big, 2, 1000).status == FailureReason.OUT_OF_RESOURCES  # type: ignore[union-attr]
    assert precheck(jpeg, 3, 1000).status == FailureReason.CANNOT_UNDERSTAND  # type: ignore[union-attr]
    batch = PartBatch()
    for number, part in enumerate((ok, big, jpeg, ok), start=1):
        assert batch.fits(part)
        batch.add(part, number)
    sent: list[list[bytes]] = []

    def store(datas: list[bytes]) -> list[StoreAnswer]:
        sent.append(datas)
        return [StoreAnswer(0, sop_instance_uid=f"1.{i}") for i in range(len(datas))]

    answers = store_checked(store, batch.take(), 1000)
    assert sent == [[b"a", b"a"]]  # only what passed, in one call
    assert [a.status for a in answers] == [0, 0xA700, 0xC000, 0]
    assert not batch.parts


def test_store_response_statuses() -> None:
    stored = StoreAnswer(0, None, False, "1.2", "1.2.3", "1.2.9", "1.2.8")
    failed = StoreAnswer(0xC000, "not DICOM")
    retry = StoreAnswer(0x0110, "gone", retry=True)
    base = "https://api/dicom-web"
    status, body = store_response([stored], base, None)
    assert status == 200
    assert body["00081190"]["Value"] == [f"{base}/studies/1.2.9"]
    assert body["00081199"]["Value"][0]["00081190"]["Value"] == [
        f"{base}/studies/1.2.9/series/1.2.8/instances/1.2.3"
    ]
    assert store_response([stored, failed], base, None)[0] == 202
    assert store_response([failed, retry], base, None)[0] == 409
    assert store_response([retry], base, None)[0] == 503
