"""Manifest: JSONL round trip, validation messages, tolerant line reader."""

from __future__ import annotations

import json

import pytest

from bpiml.data.manifest import (
    MANIFEST_NAME,
    Record,
    image_uri,
    iter_manifest_lines,
    manifest_uri,
    mask_uri,
    read_manifest,
    write_manifest,
)


def _rec(**kw):
    d = {"id": "a", "image": "images/a.jpg", "boxes": [[1, 2, 30, 40]], "mask": "masks/a.png", "split": "train"}
    d.update(kw)
    return d


def test_round_trip_keeps_extra_keys(tmp_path):
    records = [Record.from_dict(_rec(source="x", teacher={"name": "sam"})),
               Record(id="b", image="images/b.jpg", boxes=[])]
    uri = write_manifest(records, str(tmp_path))
    assert uri == str(tmp_path / MANIFEST_NAME)
    back = read_manifest(str(tmp_path))
    assert back == records
    assert back[0].extra == {"source": "x", "teacher": {"name": "sam"}}
    assert back[0].boxes == [[1.0, 2.0, 30.0, 40.0]]
    assert back[1].is_authentic and back[1].mask is None and back[1].split is None
    line = json.loads((tmp_path / MANIFEST_NAME).read_text().splitlines()[0])
    assert line["source"] == "x" and "extra" not in line  # flat


def test_write_accepts_dicts_and_reads_manifest_uri(tmp_path):
    uri = write_manifest([_rec()], str(tmp_path / "m.jsonl"))
    assert manifest_uri(uri) == uri
    assert read_manifest(uri)[0].id == "a"


@pytest.mark.parametrize("change, words", [
    ({"id": ""}, ["'id'"]),
    ({"id": 3}, ["'id'"]),
    ({"image": 5}, ["'image'"]),
    ({"boxes": "1,2,3,4"}, ["'boxes'"]),
    ({"boxes": [[1, 2, 3]]}, ["'boxes'[0]"]),
    ({"boxes": [[1, 2, 3, "4"]]}, ["'boxes'[0]"]),
    ({"boxes": [[1, 2, 3, True]]}, ["'boxes'[0]"]),
    ({"boxes": [[1, 2, 3, float("nan")]]}, ["'boxes'[0]", "non-finite"]),
    ({"mask": 1}, ["'mask'"]),
    ({"split": "dev"}, ["'split'", "dev"]),
    ({"image": "../other/a.jpg"}, ["'image'", ".."]),
    ({"image": "images/../../a.jpg"}, ["'image'", ".."]),
    ({"image": "/etc/passwd"}, ["'image'", "escapes"]),
    ({"mask": "s3://other-bucket/x.png"}, ["'mask'", "escapes"]),
    ({"image": "file:///x.jpg"}, ["'image'", "escapes"]),
])
def test_from_dict_rejections_name_the_problem(change, words):
    with pytest.raises(ValueError) as err:
        Record.from_dict(_rec(**change), where="manifest.jsonl:12")
    message = str(err.value)
    assert "manifest.jsonl:12" in message
    for w in words:
        assert w in message


def test_missing_key_is_named():
    d = _rec()
    del d["boxes"]
    with pytest.raises(ValueError, match="missing required key 'boxes'"):
        Record.from_dict(d)


def test_inner_dotdot_inside_root_is_fine():
    assert Record.from_dict(_rec(image="images/x/../a.jpg")).image == "images/x/../a.jpg"


def test_duplicate_ids_rejected_on_read_and_write(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text("\n".join(json.dumps(_rec(id=i)) for i in ["a", "b", "a", "c", "c"]) + "\n")
    with pytest.raises(ValueError, match="duplicate record id.*'a', 'c'"):
        read_manifest(str(tmp_path))
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest([_rec(), _rec()], str(tmp_path / "x"))


def test_strict_read_names_file_and_line(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(_rec()) + "\n\n" + json.dumps(_rec(id="b", split="nope")) + "\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl:3: record 'b': 'split'"):
        read_manifest(str(tmp_path))


def test_tolerant_reader_reports_bad_lines(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(_rec()) + "\n{not json\n[1, 2]\n\n" + json.dumps(_rec(id="b")) + "\n")
    items = list(iter_manifest_lines(str(tmp_path)))
    assert [where.rsplit(":", 1)[1] for where, _ in items] == ["1", "2", "3", "5"]  # file:line of each
    assert isinstance(items[0][1], dict) and isinstance(items[3][1], dict)
    assert isinstance(items[1][1], ValueError) and ":2: invalid JSON" in str(items[1][1])
    assert "expected a JSON object" in str(items[2][1])


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(str(tmp_path))


def test_uris(tmp_path):
    store = str(tmp_path)
    r = Record.from_dict(_rec())
    assert image_uri(store, r) == str(tmp_path / "images" / "a.jpg")
    assert mask_uri(store, r) == str(tmp_path / "masks" / "a.png")
    assert mask_uri(store, Record(id="b", image="b.jpg", boxes=[])) is None
    assert image_uri(store + "/manifest.jsonl", r) == str(tmp_path / "images" / "a.jpg")
    assert image_uri("s3://bucket/store", r) == "s3://bucket/store/images/a.jpg"
    bad = Record(id="c", image="../c.jpg", boxes=[])  # built in code, not validated
    with pytest.raises(ValueError, match="escapes"):
        image_uri(store, bad)
    with pytest.raises(ValueError, match="escapes"):
        write_manifest([bad], store)
