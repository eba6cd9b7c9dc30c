"""In-memory stop list of the sandbox, with phone number validation written from the vendor docs.

This module deliberately shares no code with the provider's own phone number handling: the sandbox
is the independent side of every test, so a normalisation bug cannot hide on both sides.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import NamedTuple
from zoneinfo import ZoneInfo

#: Result codes of :meth:`StopListState.add`, the same numbers the API returns.
CODE_OK = 200
CODE_PHONE_REQUIRED = 2
CODE_ALREADY_PRESENT = 3
CODE_INVALID_PHONE = 9

#: Zone of the naive ``createdAt`` strings of the list (an [INF] in the API notes: other endpoints
#: answer with +01:00/+02:00 offsets).
API_TIMEZONE = ZoneInfo("Europe/Paris")

# From the docs: French numbers in national form (0 + 9 digits) or international form (+33 + 9
# digits); other countries in international form only. [0-9], not \d, so non-ASCII digits fail.
_FR_NATIONAL = re.compile(r"0([1-9][0-9]{8})")
_FR_INTERNATIONAL = re.compile(r"\+33[1-9][0-9]{8}")
_INTERNATIONAL = re.compile(r"\+[1-9][0-9]{7,14}")

_SECONDS_PER_DAY = 86_400
_SEED_SPAN_SECONDS = 3 * 365 * _SECONDS_PER_DAY
# Seeded numbers: +336xxxxxxxx and +337xxxxxxxx, i.e. 600000000..799999999 after +33.
# Seeded numbers use French mobile blocks that are actually allocated (06 and 073-079, without the
# few unallocated 063x/069x ranges), so they look like a real account's list to any validator.
_SEED_BLOCKS = ("60", "61", "62", "64", "65", "66", "67", "68", "73", "74", "75", "76", "77", "78", "79")
_SEED_BLOCK_SIZE = 10_000_000
_SEED_POPULATION = len(_SEED_BLOCKS) * _SEED_BLOCK_SIZE


def _seed_phone(value: int) -> str:
    block, rest = divmod(value, _SEED_BLOCK_SIZE)
    return f"+33{_SEED_BLOCKS[block]}{rest:07d}"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CLOCK_STRINGS: list[str] = []


def normalize_documented(raw: object) -> str | None:
    """Return the E.164 form of ``raw`` if the SMS Partner docs accept it, else ``None``.

    Accepted (after stripping surrounding whitespace):

    * French national form ``0`` + 9 digits, the first of them 1-9 (``0612345678`` -> ``+33612345678``);
    * French international form ``+33`` + 9 digits, the first of them 1-9;
    * any other country in international form: ``+``, a country code not starting with 0, 8 to 15
      digits in all after the ``+``.

    Everything else (letters, inner spaces, ``0033...``, a bare ``336...``, non-strings) is rejected.
    """
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    national = _FR_NATIONAL.fullmatch(value)
    if national:
        return "+33" + national.group(1)
    if value.startswith("+33"):
        return value if _FR_INTERNATIONAL.fullmatch(value) else None
    if _INTERNATIONAL.fullmatch(value):
        return value
    return None


class StopRecord(NamedTuple):
    """One stop list entry: ``(stop_id, phone_number, created_at)`` with ``created_at`` aware UTC."""

    stop_id: int
    phone_number: str
    created_at: datetime


def _to_epoch(created_at: datetime | None) -> int:
    if created_at is None:
        return int(time.time())
    if created_at.tzinfo is None:
        # Naive datetimes given to the sandbox are UTC by contract (see seed_numbers).
        created_at = created_at.replace(tzinfo=timezone.utc)
    return int(created_at.timestamp())


def _clock_strings() -> list[str]:
    if not _CLOCK_STRINGS:
        _CLOCK_STRINGS.extend(
            f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(_SECONDS_PER_DAY)
        )
    return _CLOCK_STRINGS


def render_list_body(items: Iterable[tuple[int, tuple[str, int]]], count: int) -> bytes:
    """Serialise ``(stop_id, (e164, created_utc_epoch))`` items as the ``stop-sms/list`` JSON body.

    Built with string joins rather than ``json.dumps``: the values are integers and validated E.164
    strings that need no escaping. ``createdAt`` is naive Europe/Paris local time; UTC offsets are
    cached per hour and date strings per day, because converting each row through zoneinfo would
    dominate. On a million rows this is about 2.5x faster than zoneinfo + ``json.dumps``, with a
    byte-identical result (a test checks it).
    """
    clock = _clock_strings()
    offsets: dict[int, int] = {}
    days: dict[int, str] = {}
    parts: list[str] = []
    append = parts.append
    for stop_id, (phone, created) in items:
        hour = created // 3600
        offset = offsets.get(hour)
        if offset is None:
            utcoffset = datetime.fromtimestamp(hour * 3600, API_TIMEZONE).utcoffset()
            offset = offsets[hour] = int(utcoffset.total_seconds()) if utcoffset else 0
        day, second = divmod(created + offset, _SECONDS_PER_DAY)
        date = days.get(day)
        if date is None:
            date = days[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d ")
        append(f'{{"id":{stop_id},"phoneNumber":"{phone}","createdAt":"{date}{clock[second]}"}}')
    head = f'{{"success":true,"code":200,"nbData":{count},"data":['
    return (head + ",".join(parts) + "]}").encode("ascii")


class StopListState:
    """Thread-safe in-memory stop list, keyed by stop id and by E.164 number.

    Ids grow as ``max id + 1`` (a removed id at the top is reused, as a max-based sequence would).
    Created times are kept as whole UTC seconds, the resolution of the API's ``createdAt``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Insertion order is id order because ids only grow; the list body relies on it.
        self._by_id: dict[int, tuple[str, int]] = {}
        self._by_phone: dict[str, int] = {}
        self._max_id = 0
        self._version = 0
        self._body: bytes | None = None
        self._body_version = -1

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def __contains__(self, phone: object) -> bool:
        return self.get_id(phone) is not None

    @property
    def version(self) -> int:
        """A counter that changes on every mutation (for caches)."""
        with self._lock:
            return self._version

    def get_id(self, phone: object) -> int | None:
        """Return the stop id of ``phone`` (any documented format), or ``None`` if it is not listed."""
        e164 = normalize_documented(phone)
        if e164 is None:
            return None
        with self._lock:
            return self._by_phone.get(e164)

    def phone_numbers(self) -> set[str]:
        """All listed numbers, in E.164 form."""
        with self._lock:
            return set(self._by_phone)

    def snapshot(self) -> dict[str, int]:
        """A copy of the list as ``{e164: stop_id}``, for before/after comparisons in tests."""
        with self._lock:
            return dict(self._by_phone)

    def list_entries(self) -> list[StopRecord]:
        """All entries in id order as :class:`StopRecord` ``(stop_id, e164, created_at_utc)``."""
        with self._lock:
            items = list(self._by_id.items())
        return [
            StopRecord(stop_id, phone, datetime.fromtimestamp(created, timezone.utc))
            for stop_id, (phone, created) in items
        ]

    def list_body(self, truncated: bool = False) -> bytes:
        """The JSON body of ``stop-sms/list``, cached until the list changes.

        :param truncated: drop the last row but keep ``nbData`` (the ``truncated_list`` fault).
        """
        with self._lock:
            if self._body is None or self._body_version != self._version:
                # Built under the lock so the body is a consistent snapshot; writers wait for it.
                self._body = render_list_body(self._by_id.items(), len(self._by_id))
                self._body_version = self._version
            body = self._body
            count = len(self._by_id)
        if not truncated or count == 0:
            return body
        cut = body.rfind(b',{"id":') if count > 1 else body.index(b"[") + 1
        return body[:cut] + b"]}"

    # -- writing -------------------------------------------------------------------------------

    def add(self, phone: object, created_at: datetime | None = None) -> tuple[int, int | None]:
        """Add ``phone`` as the API would.

        :returns: ``(code, stop_id)``: ``(200, new id)`` when added; ``(2, None)`` when the number is
            missing or empty; ``(9, None)`` when it is invalid per the docs; ``(3, None)`` when it
            is already listed.
        """
        if phone is None or (isinstance(phone, str) and not phone.strip()):
            return CODE_PHONE_REQUIRED, None
        e164 = normalize_documented(phone)
        if e164 is None:
            return CODE_INVALID_PHONE, None
        created = _to_epoch(created_at)
        with self._lock:
            if e164 in self._by_phone:
                return CODE_ALREADY_PRESENT, None
            stop_id = self._insert(e164, created)
        return CODE_OK, stop_id

    def remove(self, stop_id: int) -> bool:
        """Remove the entry with ``stop_id``; return whether it existed."""
        with self._lock:
            entry = self._by_id.pop(stop_id, None)
            if entry is None:
                return False
            del self._by_phone[entry[0]]
            if stop_id == self._max_id:
                # Insertion order is id order, so the last key is the new maximum.
                self._max_id = next(reversed(self._by_id), 0)
            self._version += 1
            return True

    def clear(self) -> None:
        """Empty the list (ids start again at 1)."""
        with self._lock:
            self._by_id.clear()
            self._by_phone.clear()
            self._max_id = 0
            self._version += 1
            self._body = None

    def seed_numbers(self, numbers: Iterable[str | tuple[str, datetime]]) -> int:
        """Append explicit numbers, each an E.164 string or a ``(phone, created_at_utc)`` pair.

        Numbers go through :func:`normalize_documented`; a naive ``created_at`` is taken as UTC and
        a missing one as now. Numbers already listed are skipped.

        :returns: how many numbers were added.
        :raises ValueError: if a number is not valid per the docs.
        """
        added = 0
        for item in numbers:
            phone, created_at = (item, None) if isinstance(item, str) else item
            e164 = normalize_documented(phone)
            if e164 is None:
                raise ValueError(f"Cannot seed the sandbox stop list with invalid number {phone!r}")
            created = _to_epoch(created_at)
            with self._lock:
                if e164 not in self._by_phone:
                    self._insert(e164, created)
                    added += 1
        return added

    def seed_random(self, n: int, rng: random.Random, now: datetime | None = None) -> int:
        """Append ``n`` random distinct French mobile numbers (``+336``/``+337`` in allocated blocks).

        Created times spread over the 3 years before ``now`` (default: the current time), oldest
        first, so ids and dates grow together as on a real account. For a given ``rng`` seed the
        numbers and their order are always the same. A million numbers take about 2 s.

        :returns: how many numbers were added (``n``).
        """
        if n <= 0:
            return 0
        end = _to_epoch(now)
        start = end - _SEED_SPAN_SECONDS
        step = max(_SEED_SPAN_SECONDS // n, 1)
        with self._lock:
            # random.sample over a range is fast and gives distinct values; only when the list is
            # not empty must numbers already listed be filtered out and replaced.
            values = rng.sample(range(_SEED_POPULATION), n)
            phones = [_seed_phone(value) for value in values]
            if self._by_phone:
                self._drop_listed(values, phones, n, rng)
            first_id = self._max_id + 1
            ids = range(first_id, first_id + n)
            # Evenly spread with a per-number jitter derived from the value: no extra RNG draws.
            created = [start + (i * _SEED_SPAN_SECONDS) // n + value % step for i, value in enumerate(values)]
            self._by_id.update(zip(ids, zip(phones, created, strict=True), strict=True))
            self._by_phone.update(zip(phones, ids, strict=True))
            self._max_id = first_id + n - 1
            self._version += 1
        return n

    def _drop_listed(self, values: list[int], phones: list[str], n: int, rng: random.Random) -> None:
        # Caller holds the lock. Replaces, in place, drawn numbers that are already listed.
        listed = self._by_phone
        kept = [(v, p) for v, p in zip(values, phones, strict=True) if p not in listed]
        seen = {v for v, _ in kept}
        while len(kept) < n:
            for value in rng.sample(range(_SEED_POPULATION), n - len(kept)):
                phone = _seed_phone(value)
                if value not in seen and phone not in listed:
                    seen.add(value)
                    kept.append((value, phone))
        values[:] = [v for v, _ in kept]
        phones[:] = [p for _, p in kept]

    def _insert(self, e164: str, created: int) -> int:
        # Caller holds the lock.
        self._max_id += 1
        stop_id = self._max_id
        self._by_id[stop_id] = (e164, created)
        self._by_phone[e164] = stop_id
        self._version += 1
        return stop_id
