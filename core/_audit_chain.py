"""The audit chain's rules: each record's MAC, the seal of an unkeyed chain, and the check.

A record's ``hash`` column holds HMAC-SHA256, keyed with the instance's ``audit_chain_key``
(``secrets.json``, never in the database), of the record's canonical JSON, which includes the
previous record's ``hash`` (``prev_hash``). Whoever can write the table but not read the
secrets file cannot write a record, or rewrite one, that verifies.

Records written before the chain was keyed carry a plain SHA-256 of the same canonical JSON.
The first keyed record after them is a *checkpoint* (110100 Application Activity, resource
``audit_chain``) whose MAC covers the last unkeyed record's hash: it seals them, so they still
verify by the old rule while nothing can be added or changed before it, and every record after
it must carry a MAC. A chain with records and no MAC at all, or with an unkeyed record after a
keyed one, does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHECKPOINT_RESOURCE",
    "GENESIS_HASH",
    "ChainBreak",
    "VerifyReport",
    "check_chain",
    "legacy_hash",
    "record_mac",
]

GENESIS_HASH = "0" * 64
CHECKPOINT_RESOURCE = "audit_chain"
HASHED = (
    "seq",
    "time",
    "event_code",
    "event_name",
    "action",
    "outcome",
    "user_name",
    "role",
    "source_address",
    "resource_type",
    "resource_id",
    "patient_id_hash",
    "detail",
    "prev_hash",
)


@dataclass(frozen=True)
class ChainBreak:
    """One place where the chain does not verify: the record and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class VerifyReport:
    """Result of checking the chain: how many records, and what is wrong (empty when intact)."""

    records: int
    breaks: list[ChainBreak] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the chain is intact."""
        return not self.breaks

    @property
    def problems(self) -> list[str]:
        """Every break, as a sentence naming its record."""
        return [item.reason for item in self.breaks]

    @property
    def first_bad(self) -> ChainBreak | None:
        """The break at the lowest sequence number, or ``None`` when the chain is intact."""
        return min(self.breaks, key=lambda item: item.seq) if self.breaks else None


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {name: data[name] for name in HASHED},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    ).encode()


def legacy_hash(data: Mapping[str, Any]) -> str:
    """The unkeyed SHA-256 of a record (the rule before the chain was keyed)."""
    return hashlib.sha256(_canonical(data)).hexdigest()


def record_mac(key: bytes, data: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of a record's canonical JSON (``prev_hash`` included) under ``key``."""
    return hmac.new(key, _canonical(data), hashlib.sha256).hexdigest()


def is_keyed(key: bytes, data: Mapping[str, Any]) -> bool:
    """Whether the record's ``hash`` is its MAC under ``key``."""
    return hmac.compare_digest(record_mac(key, data), str(data["hash"]))


def _is_checkpoint(data: Mapping[str, Any]) -> bool:
    return bool(data["resource_type"] == CHECKPOINT_RESOURCE)


def check_chain(
    key: bytes, records: Iterable[Mapping[str, Any]], head: tuple[int, str]
) -> VerifyReport:
    """Walk ``records`` (in sequence order) and the chain's ``head`` (seq, hash); report every
    break: a gap, a record that does not follow the one before, one whose MAC (or, before the
    seal, hash) does not match, an unkeyed record after a keyed one, a head that names another
    record. See the module docstring for the rules."""
    breaks: list[ChainBreak] = []
    expected_seq, prev_hash, count, keyed_seen = 1, GENESIS_HASH, 0, False
    for data in records:
        seq = int(data["seq"])
        count += 1
        if seq != expected_seq:
            breaks.append(
                ChainBreak(expected_seq, f"records {expected_seq}..{seq - 1} are missing")
            )
        if data["prev_hash"] != prev_hash:
            breaks.append(ChainBreak(seq, f"record {seq} does not follow the record before it"))
        if is_keyed(key, data):
            if not keyed_seen and seq != 1 and not _is_checkpoint(data):
                breaks.append(
                    ChainBreak(seq, f"record {seq} is keyed but no checkpoint seals the records")
                )
            keyed_seen = True
        elif keyed_seen:
            breaks.append(
                ChainBreak(
                    seq,
                    f"record {seq} was modified after it was written, or written without the "
                    "audit key (its MAC does not match)",
                )
            )
        elif not hmac.compare_digest(legacy_hash(data), str(data["hash"])):
            breaks.append(ChainBreak(seq, f"record {seq} was modified after it was written"))
        expected_seq, prev_hash = seq + 1, str(data["hash"])
    if count and not keyed_seen:
        breaks.append(
            ChainBreak(
                1,
                "record 1 onwards carry no MAC of the audit key: the chain was rewritten, or "
                "was never sealed",
            )
        )
    head_seq, head_hash = head
    if head_seq != expected_seq - 1 or head_hash != prev_hash:
        breaks.append(
            ChainBreak(
                expected_seq - 1,
                f"the chain ends at record {expected_seq - 1} but the head names record "
                f"{head_seq}: newest records were deleted or the head was altered",
            )
        )
    return VerifyReport(count, breaks)
