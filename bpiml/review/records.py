"""A pseudo store's records as the review tools see them: decisions applied, ranked by teacher confidence."""

from __future__ import annotations

import math
from typing import Any

from bpiml.data import imageio, manifest
from bpiml.pseudolabel import reviews
from bpiml.pseudolabel.store import PseudoStore


def load(store: str, allow_external: bool = False) -> tuple[PseudoStore, list[dict[str, Any]]]:
    """(the opened store, its records as dicts with their review decisions applied)."""
    opened = PseudoStore.open(store, allow_external)
    decisions = reviews.latest_decisions(opened.root)
    records = [reviews.apply(r.to_dict(), decisions.get(r.id)) for r in manifest.read_manifest(opened.root)]
    return opened, records


def confidence(record: dict[str, Any]) -> float | None:
    value = record.get("confidence")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ranked(records: list[dict[str, Any]], below: float | None = None, lowest: int | None = None) -> list[dict[str, Any]]:
    """Records by ascending confidence (null confidence last, then by id); `below`: only those with a
    confidence < below (nulls left out); `lowest`: the first N of that order."""
    def key(r: dict[str, Any]) -> tuple[float, str]:
        c = confidence(r)
        return (math.inf if c is None else c, str(r["id"]))

    chosen = sorted(records, key=key)
    if below is not None:
        chosen = [r for r in chosen if (c := confidence(r)) is not None and c < below]
    return chosen[:lowest] if lowest is not None else chosen


def record_of(record: dict[str, Any]) -> manifest.Record:
    return manifest.Record.from_dict(record)


def pseudo_mask(opened: PseudoStore, record: dict[str, Any]) -> Any:
    """The teacher's mask (HxW bool); FileNotFoundError / ValueError naming the record when it is missing."""
    uri = opened.pseudo_mask(record_of(record))
    if not uri:
        raise ValueError(f"record {record['id']!r} has no pseudo_mask")
    return imageio.load_mask(uri)
