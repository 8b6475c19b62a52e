"""`bpiml review page`: a static review page of a pseudo store, least confident first, without Label Studio.

    <out>/index.html, page-2.html, ...   `--per-page` records each: a thumbnail (boxes in green, the
                                         mask tinted red: the corrected one where a human corrected it),
                                         id, confidence (image and per box), teacher, review status
    <out>/thumbs/<stem>.jpg              the thumbnails
"""

from __future__ import annotations

import argparse
import html
import logging
import math
from typing import Any

from bpiml.data import imageio, naming, storage
from bpiml.data.visual import _boxes_panel, _fit, overlay
from bpiml.evaluation.report_html import CSS, fmt
from bpiml.pseudolabel import reviews
from bpiml.pseudolabel.store import PseudoStore
from bpiml.review import records as review_records

logger = logging.getLogger(__name__)
THUMB_HEIGHT = 160
PAGE_CSS = ("figure{display:inline-block;margin:6px;vertical-align:top;max-width:360px}"
            "figcaption{font-size:12px}.rejected img{opacity:.35}nav{margin:8px 0}")


def page_name(number: int) -> str:
    return "index.html" if number == 1 else f"page-{number}.html"


def thumbnail(opened: PseudoStore, record: dict[str, Any]) -> bytes:
    """JPEG: the image, its boxes, and the mask training uses, THUMB_HEIGHT pixels high."""
    image, _ = imageio.load_image(opened.image(review_records.record_of(record)))
    mask = imageio.load_mask(storage.resolve_in_store(opened.root, reviews.training_mask(record)))
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask of {record['id']!r} is {mask.shape[1]}x{mask.shape[0]}, its image "
                         f"{image.shape[1]}x{image.shape[0]}")
    return imageio.encode_image(_fit(_boxes_panel(overlay(image, mask), record["boxes"]), THUMB_HEIGHT), "jpeg", 85)


def _caption(rank: int, record: dict[str, Any]) -> str:
    boxes = record.get("box_confidence") or []
    review = record.get("review") or {}
    parts = [f"#{rank} {record['id']}", f"confidence {fmt(review_records.confidence(record))}"]
    if boxes:
        parts.append("boxes " + ", ".join(fmt(b) for b in boxes))
    parts.append(f"teacher {record.get('teacher', '?')}")
    if review:
        parts.append(f"review: {review['status']} by {review['by']}")
    return " | ".join(parts)


def _figure(opened: PseudoStore, out: str, rank: int, record: dict[str, Any]) -> str:
    name = f"thumbs/{naming.file_stem(str(record['id']))}.jpg"
    caption = html.escape(_caption(rank, record))
    status = (record.get("review") or {}).get("status", "")
    try:
        storage.write_bytes(storage.join(out, name), thumbnail(opened, record))
    except (FileNotFoundError, ValueError, OSError) as err:
        logger.warning("review page: no thumbnail for %s: %s: %s", record["id"], type(err).__name__, err)
        return f'<figure class="missing"><figcaption>{caption}<br>{html.escape(str(err))}</figcaption></figure>'
    return (f'<figure class="{status}"><img src="{name}" alt="{html.escape(str(record["id"]))}" '
            f'height="{THUMB_HEIGHT}"><figcaption>{caption}</figcaption></figure>')


def _nav(number: int, pages: int) -> str:
    links = [f'<a href="{page_name(n)}">{n}</a>' if n != number else f"<b>{n}</b>" for n in range(1, pages + 1)]
    return f"<nav>page {number} of {pages}: {' '.join(links)}</nav>"


def write_page(store: str, out: str | None = None, per_page: int = 50, limit: int | None = None) -> list[str]:
    """Write the pages (default: <store>/review/page); returns their URIs, the first one first."""
    opened, records = review_records.load(store)
    out = out or storage.join(opened.root, reviews.REVIEW_DIR, "page")
    chosen = review_records.ranked(records, lowest=limit)
    pages = max(1, math.ceil(len(chosen) / per_page))
    written = []
    for number in range(1, pages + 1):
        start = (number - 1) * per_page
        figures = "".join(_figure(opened, out, start + i + 1, r) for i, r in enumerate(chosen[start:start + per_page]))
        title = f"review: {opened.root}"
        body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{CSS}{PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
                f"<p>{len(chosen)} records, least confident first (no confidence last); boxes green, mask red "
                f"(the corrected one where reviewed); rejected ones faded.</p>{_nav(number, pages)}"
                f"{figures or '<p>(no records)</p>'}{_nav(number, pages)}</body></html>")
        uri = storage.join(out, page_name(number))
        storage.write_bytes(uri, body.encode("utf-8"))
        written.append(uri)
    logger.info("review page: %d records on %d page(s) -> %s", len(chosen), pages, written[0])
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="pseudo-labeled store (local or s3://)")
    parser.add_argument("--out", default=None, help="folder for the pages (default: <store>/review/page)")
    parser.add_argument("--per-page", type=int, default=50, help="records per page")
    parser.add_argument("--limit", type=int, default=None, help="only the N least confident records")


def run(args: argparse.Namespace) -> int:
    if args.per_page < 1:
        raise ValueError(f"--per-page must be >= 1, got {args.per_page}")
    pages = write_page(args.store, args.out, args.per_page, args.limit)
    print(f"{len(pages)} page(s): {pages[0]}")
    return 0
