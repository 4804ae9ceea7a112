"""Bounded inflation (core.inflation): bombs are refused after their budget, in bounded memory."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from core.inflation import (
    RAW_DEFLATE_WBITS,
    CorruptCompressedDataError,
    InflationLimitError,
    check_part10_inflation,
    deflated_dataset_offset,
    inflate,
)

_MIB = 1024 * 1024


def _raw_deflate_of_zeros(mib: int) -> bytes:
    deflater = zlib.compressobj(1, zlib.DEFLATED, RAW_DEFLATE_WBITS)
    zeros = bytes(_MIB)
    return b"".join(deflater.compress(zeros) for _ in range(mib)) + deflater.flush()


def test_a_deflate_bomb_is_refused_in_bounded_memory() -> None:
    bomb = _raw_deflate_of_zeros(512)  # 0.5 MiB that inflates to 512 MiB
    tracemalloc.start()
    try:
        with pytest.raises(InflationLimitError, match="beyond the limit of 67108864 bytes"):
            inflate(bomb, limit=64 * _MIB, wbits=RAW_DEFLATE_WBITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 72 * _MIB  # what was kept up to the limit, never the 512 MiB


def test_gzip_data_within_the_limit_inflates_whole_also_with_several_members() -> None:
    data = b"radcloud " * 100_000
    assert inflate(gzip.compress(data), limit=len(data)) == data
    assert inflate(gzip.compress(data) + gzip.compress(data), limit=2 * len(data)) == data * 2
    with pytest.raises(InflationLimitError):
        inflate(gzip.compress(data), limit=len(data) - 1)


def test_corrupt_data_is_named() -> None:
    with pytest.raises(CorruptCompressedDataError, match="the upload cannot be inflated"):
        inflate(b"\x1f\x8b\x08\x00garbage" * 10, limit=_MIB, what="the upload")


def test_a_deflated_part10_file_is_counted_inflated_and_others_pass_unread() -> None:
    deflated = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    offset = deflated_dataset_offset(deflated)
    assert offset is not None and 132 < offset < len(deflated)
    check_part10_inflation(deflated, _MIB)  # about 260 KiB inflated
    with pytest.raises(InflationLimitError, match=r"1\.2\.840\.10008\.1\.2\.1\.99"):
        check_part10_inflation(deflated, 10_000)
    plain = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert deflated_dataset_offset(plain) is None
    check_part10_inflation(plain, 1)  # not deflated: its size is the intake's to judge
    assert deflated_dataset_offset(b"not dicom") is None
