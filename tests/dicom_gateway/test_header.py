"""The header checks of the Orthanc edge's STOW-RS (``validation.inspect_header``): its own
reader (``dicom_gateway._header``) answers exactly as pydicom's reading does, on pydicom's test
corpus and on cut and mutated files, or leaves the file to pydicom."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

from dicom_gateway import validation
from dicom_gateway._header import read_header
from dicom_gateway.exceptions import GatewayError
from dicom_gateway.validation import InstanceInfo, inspect_header, inspect_instance
from tests.dicom_gateway.dicom_files import synthetic_ct


def _outcome(data: bytes) -> InstanceInfo | str:
    try:
        info = inspect_header(data)
    except GatewayError as exc:
        return type(exc).__name__
    return dataclasses.replace(info, warnings=())


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[InstanceInfo | str, ...]:
    """``inspect_header``'s outcome by the module's reader, then by pydicom's (warnings
    aside: only pydicom reports odd values)."""
    fast = _outcome(data)
    with monkeypatch.context() as patch:
        patch.setattr(validation, "read_header", lambda _: None)
        slow = _outcome(data)
    return fast, slow


def _corpus() -> list[Path]:
    return [
        Path(name)
        for name in get_testdata_files("*")
        if Path(name).is_file() and Path(name).read_bytes()[128:132] == b"DICM"
    ]


def test_the_corpus_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    read = 0
    for path in _corpus():
        data = path.read_bytes()
        read += read_header(data) is not None
        fast, slow = _both(data, monkeypatch)
        assert fast == slow, path.name
    assert read >= 40  # most of pydicom's files take the fast way


def test_what_it_reads_matches_the_full_inspection() -> None:
    data = synthetic_ct(size=64)
    assert read_header(data) is not None
    assert inspect_header(data) == inspect_instance(data)[0]


def test_cut_files_read_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    data = synthetic_ct(size=32)
    for end in range(132, len(data), 37):
        fast, slow = _both(data[:end], monkeypatch)
        assert fast == slow, end


def test_mutated_files_read_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(16)
    original = bytearray(synthetic_ct(size=16))
    for _ in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(132, len(data))] = rng.randrange(256)
        fast, slow = _both(bytes(data), monkeypatch)
        assert fast == slow, bytes(data).hex()
