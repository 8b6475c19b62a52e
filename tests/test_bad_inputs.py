"""One case per kind of bad input, run through the pseudo-labeling stages as the job runs them
(parse -> plan -> decode -> teacher -> write), each with the outcome docs/data-formats.md promises.

The table in the docs ("Bad inputs") and `CASES` below must list the same cases with the same
outcomes: the last test compares them, so neither can drift from the other or from the code.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bpiml.data.imageio import decode_mask
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.job import check_locations
from bpiml.pseudolabel.labeler import TeacherLabeler
from bpiml.pseudolabel.plan import plan_block
from bpiml.pseudolabel.rows import table
from bpiml.pseudolabel.sink import route
from bpiml.pseudolabel.stages import OUT_COLUMNS, decode_rows, parse_lines, write_masks
from bpiml.pseudolabel.store import read_rejects

REPO = Path(__file__).resolve().parents[1]
BOX = [[4, 4, 20, 16]]

# case -> (outcome, what the row's reason or notes must contain). Outcomes: "labeled" (no note),
# "labeled, noted" (labeled; the conversion is listed in rejects.jsonl as converted/clipped),
# "rejected (<stage>)" (a rejects.jsonl row; the job goes on), "job fails" (before any work).
CASES: dict[str, tuple[str, str]] = {
    "missing image": ("rejected (decode)", "image missing"),
    "corrupt image": ("rejected (decode)", "not an image or unknown format"),
    "truncated image": ("rejected (decode)", "corrupt or truncated image"),
    "zero-byte image": ("rejected (decode)", "empty file"),
    "grayscale": ("labeled, noted", "converted grayscale to RGB"),
    "RGBA": ("labeled, noted", "dropped alpha (RGBA)"),
    "16-bit": ("labeled, noted", "scaled 16-bit to 8-bit"),
    "16-bit RGB": ("labeled, noted", "scaled 16-bit to 8-bit"),
    "32-bit float": ("labeled, noted", "scaled float to 8-bit"),
    "palette": ("labeled, noted", "converted palette to RGB"),
    "CMYK": ("labeled, noted", "converted CMYK to RGB"),
    "EXIF-rotated": ("labeled, noted", "applied EXIF orientation 6"),
    "huge (over 100 MP)": ("rejected (decode)", "too many pixels"),
    "degenerate box": ("rejected (decode)", "every box is degenerate or outside the image"),
    "out-of-bounds box": ("labeled, noted", "clipped 1 box to the image"),
    "NaN box": ("rejected (manifest)", "non-finite number"),
    "box on an authentic image": ("rejected (decode)", "marked authentic"),
    "label mask 0..N": ("labeled", "iou_gt 1.0 (every label > 0 is manipulated)"),
    "path escape": ("rejected (manifest)", "escapes the store root"),
    "symlink escape": ("rejected (decode)", "symlinks may not leave the store"),
    "malformed JSON line": ("rejected (manifest)", "bad record"),
    "duplicate id": ("rejected (manifest)", "duplicate id"),
    "too many boxes": ("rejected (decode)", "boxes > max_boxes"),
    "empty manifest": ("job fails", "the manifest is empty"),
}


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w * 3).reshape(h, w, 3) * 7 % 251).astype(np.uint8)


def _huge_png() -> bytes:
    """A valid PNG whose header claims 20000 x 10000 pixels (never decoded: refused from the header)."""
    data = bytearray(_save(Image.fromarray(_photo())))
    ihdr = struct.pack(">II", 20000, 10000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(_photo()), "JPEG", exif=exif.tobytes(), quality=95)


def _build_store(root: Path, outside: Path) -> tuple[list[str], dict[str, str]]:
    """Manifest lines (one or two per case) and the id each case's outcome is read from."""
    photo = _photo()
    files = {
        "ok.png": _save(Image.fromarray(photo)),
        "corrupt.jpg": b"this is not an image at all",
        "truncated.jpg": _save(Image.fromarray(photo), "JPEG")[:200],
        "zero.jpg": b"",
        "gray.png": _save(Image.fromarray(photo[..., 0])),
        "rgba.png": _save(Image.fromarray(np.dstack([photo, photo[..., :1]]), "RGBA")),
        "g16.png": _save(Image.fromarray(photo[..., 0].astype(np.uint16) * 257)),
        "rgb16.png": cv2.imencode(".png", photo.astype(np.uint16) * 257)[1].tobytes(),  # Pillow writes no 48-bit
        "f32.tif": _save(Image.fromarray(photo[..., 0].astype(np.float32) / 255.0, "F"), "TIFF"),
        "palette.png": _save(Image.fromarray(photo).quantize(colors=8)),
        "cmyk.jpg": _save(Image.fromarray(photo).convert("CMYK"), "JPEG"),
        "exif.jpg": _exif_jpeg(),
        "huge.png": _huge_png(),
    }
    label = np.zeros((24, 32), np.uint8)
    label[4:16, 4:12], label[4:16, 12:20] = 1, 3  # two regions with labels 1 and 3
    files["label.png"] = _save(Image.fromarray(label))
    (root / "images").mkdir(parents=True)
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    outside.write_bytes(files["ok.png"])
    os.symlink(outside, root / "images" / "link.png")

    def line(rid: str, image: str, boxes=BOX, **extra) -> str:
        return json.dumps({"id": rid, "image": f"images/{image}", "boxes": boxes, **extra})

    by_case = {
        "missing image": line("missing", "nope.jpg"),
        "corrupt image": line("corrupt", "corrupt.jpg"),
        "truncated image": line("truncated", "truncated.jpg"),
        "zero-byte image": line("zero", "zero.jpg"),
        "grayscale": line("gray", "gray.png"),
        "RGBA": line("rgba", "rgba.png"),
        "16-bit": line("g16", "g16.png"),
        "16-bit RGB": line("rgb16", "rgb16.png"),
        "32-bit float": line("f32", "f32.tif"),
        "palette": line("palette", "palette.png"),
        "CMYK": line("cmyk", "cmyk.jpg"),
        "EXIF-rotated": line("exif", "exif.jpg"),
        "huge (over 100 MP)": line("huge", "huge.png"),
        "degenerate box": line("degenerate", "ok.png", [[10, 10, 10, 20]]),
        "out-of-bounds box": line("oob", "ok.png", [[-5, 4, 20, 60]]),
        "NaN box": line("nan", "ok.png", [[float("nan"), 4, 20, 16]]),
        "box on an authentic image": line("authentic", "ok.png", authentic=True),
        "label mask 0..N": line("label", "ok.png", [[4, 4, 20, 16]], mask="images/label.png"),
        "path escape": json.dumps({"id": "escape", "image": "../outside.png", "boxes": BOX}),
        "symlink escape": line("symlink", "link.png"),
        "malformed JSON line": '{"id": "malformed", "image": ',
        "duplicate id": line("dup", "ok.png") + "\n" + line("dup", "gray.png"),
        "too many boxes": line("many", "ok.png", [[1, 1, 5, 5]] * 65),
    }
    ids = {case: (json.loads(text.splitlines()[0])["id"] if case != "malformed JSON line" else None)
           for case, text in by_case.items()}
    return "\n".join(by_case.values()).splitlines(), ids


def _run_stages(lines: list[str], store: Path, out: Path) -> dict[str, dict]:
    """The job's stages by hand, in its order; returns every record and reject row of the run, by id
    (the stages write the rows they reject to rejects/ themselves; the sink writes the records and notes)."""
    cfg = PseudoLabelConfig(store=str(store), out=str(out), teacher="box")
    parsed = parse_lines({"text": np.array(lines, dtype=object)}, identity="box-v1")
    rows = sorted(parsed.to_pylist(), key=lambda r: r["id"])  # the plan sees each id's rows together, sorted
    planned = plan_block(table(rows), out=str(out), run_id="run1")
    decoded = decode_rows(planned, store=str(store), out=str(out), run_id="run1", max_boxes=cfg.max_boxes)
    written = write_masks(TeacherLabeler(cfg.to_dict(), "run1")(decoded), store=str(store), out=str(out),
                          run_id="run1")
    sunk = [{c: written[c][i] for c in OUT_COLUMNS} for i in range(len(written["id"]))]
    [(_, notes), (_, lines_out)], _ = route(sunk)
    by_id: dict[str, dict] = {}
    for r in read_rejects(str(out)) + notes:
        by_id.setdefault(r.get("id") or "<no id>", {}).setdefault("rejects", []).append(r)
    for r in (json.loads(line) for line in lines_out):
        by_id.setdefault(r["id"], {})["record"] = r
    return by_id


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    root = tmp_path_factory.mktemp("bad")
    store, out = root / "store", root / "out"
    lines, ids = _build_store(store, root / "outside.png")
    by_id = _run_stages(lines, store, out)
    found: dict[str, tuple[str, str]] = {}
    for case, rid in ids.items():
        entry = by_id.get(rid) if rid else by_id.get("<no id>")
        assert entry, f"{case}: no output row at all (lost)"
        rejected = [r for r in entry.get("rejects", []) if r["action"] == "rejected"]
        noted = [r for r in entry.get("rejects", []) if r["action"] in ("converted", "clipped")]
        if rejected:
            assert "record" not in entry, f"{case}: both labeled and rejected"
            found[case] = (f"rejected ({rejected[0]['stage']})", rejected[0]["reason"])
        elif noted:
            found[case] = ("labeled, noted", "; ".join(r["reason"] for r in noted))
        else:
            record = entry["record"]
            mask = decode_mask((out / record["pseudo_mask"]).read_bytes())
            assert mask.shape == (record["height"], record["width"])
            found[case] = ("labeled", f"iou_gt {record['iou_gt']}")
    empty = root / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    with pytest.raises(ValueError) as err:
        check_locations(PseudoLabelConfig(store=str(empty), out=str(root / "empty-out"), teacher="box"))
    found["empty manifest"] = ("job fails", str(err.value))
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_has_its_documented_outcome(outcomes, case: str) -> None:
    outcome, words = CASES[case]
    got_outcome, got_text = outcomes[case]
    assert got_outcome == outcome, f"{case}: {got_outcome} ({got_text})"
    assert words.split(" (")[0] in got_text, f"{case}: {got_text!r} does not say {words!r}"


def test_the_docs_table_lists_every_case_with_its_outcome() -> None:
    text = (REPO / "docs" / "data-formats.md").read_text()
    section = text[text.index("## Bad inputs"):]
    section = section[:section.index("\n## ")]  # up to the next section
    rows = re.findall(r"^\| (.+?) \| (.+?) \| (.+?) \|$", section, flags=re.MULTILINE)
    table = {case: (outcome, words.strip("`")) for case, outcome, words in rows
             if case not in ("input", "---")}
    assert table == CASES
