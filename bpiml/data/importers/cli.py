"""`bpiml import-imdl` and `bpiml import-coco`: the importers' command lines."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from bpiml.config import BaseConfig, HelpFormatter, check_range, field
from bpiml.data import storage
from bpiml.data.importers.coco import import_coco
from bpiml.data.importers.imdl import import_imdl
from bpiml.data.importers.summary import ImportSummary, check_split_options
from bpiml.data.splits import CVIP_SCENE_PATTERN


@dataclass
class _SplitOptions(BaseConfig):
    """Options shared by the importers."""

    split: str | None = field(None, help="one split for every record: train | val | test")
    split_by_scene: bool = field(False, help="assign train/val(/test) holding out whole source scenes")
    val_fraction: float = field(0.2, help="fraction of records held out as val (with --split-by-scene)")
    test_fraction: float = field(0.0, help="fraction of records held out as test (with --split-by-scene)")
    scene_pattern: str = field(CVIP_SCENE_PATTERN, help="regex finding the scene key in a file stem (else the stem)")
    seed: int = field(0, help="seed for splits and jitter")
    pad: float = field(0.0, help="grow each box side by this fraction of the box side")
    jitter: float = field(0.0, help="move each box edge by up to this fraction of the box side, in [0, 0.5)")
    copy: bool = field(False, help="copy images/masks into the output store")
    link: bool = field(False, help="symlink the data folder into the (local) output store as 'data' (local data "
                                   "outside --out is linked anyway unless --copy)")

    def validate(self) -> None:
        check_split_options(self.split, self.split_by_scene, self.val_fraction, self.test_fraction, self.pad, self.jitter)


def _check_out(out: str) -> None:
    if not out:
        raise ValueError("--out is required: the store to write (an importer never writes into the dataset's folder "
                         "unless --out names it; local data outside --out is reached through one symlink)")


def _placement(copy: bool, link: bool, out: str) -> dict[str, bool]:
    """Local data outside the output store is linked unless --copy; s3:// data needs --copy."""
    return {"copy": copy, "link": link or (not copy and not storage.is_s3(out))}


@dataclass
class ImdlImportConfig(_SplitOptions):
    """IMDL-BenCo list JSON -> store manifest, boxes derived from the masks."""

    index: str = field("", help="IMDL-BenCo list JSON ([[image, mask], [image, \"Negative\"], ...])")
    out: str = field("", help="output store (required; the index's own folder only when you name it)")
    data_root: str | None = field(None, help="folder the index paths are relative to (default: the index's folder)")
    merge_distance: int = field(0, help="merge boxes whose gap is <= this many px (-1: never merge)")
    min_area: int = field(16, help="drop mask components smaller than this many px")
    workers: int = field(4, help="threads reading masks")

    def validate(self) -> None:
        super().validate()
        if not self.index:
            raise ValueError("index is required (--index path/to/index.json)")
        _check_out(self.out)
        check_range("min_area", self.min_area, 1)
        check_range("workers", self.workers, 1)


@dataclass
class CocoImportConfig(_SplitOptions):
    """COCO detection JSON -> store manifest (bbox [x, y, w, h] -> [x0, y0, x1, y1])."""

    coco_json: str = field("", help="COCO detection JSON")
    image_root: str = field("", help="folder the COCO file_name paths are relative to (default: the JSON's folder)")
    out: str = field("", help="output store (required; the image root only when you name it)")
    min_side: float = field(1.0, help="drop boxes with a side under this many px after clipping")
    category_ids: list[int] = field([], help="keep only these COCO category ids (default: all)")

    def validate(self) -> None:
        super().validate()
        if not self.coco_json:
            raise ValueError("coco_json is required (--coco-json path/to/instances.json)")
        _check_out(self.out)


def _run_cli(prog: str, config_cls: type[BaseConfig], argv: list[str], run: Callable[[Any], ImportSummary]) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog=prog, description=(config_cls.__doc__ or "").strip())
    config_cls.add_arguments(parser)
    try:
        config = config_cls.from_args(parser.parse_args(argv))
        summary = run(config)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0 if summary.n_records else 1


def cli_import_imdl(argv: list[str]) -> int:
    """`bpiml import-imdl --index INDEX.json [--out STORE] [--split-by-scene] [--merge-distance N] [--pad F] ...`"""

    def run(c: ImdlImportConfig) -> ImportSummary:
        kwargs = {k: v for k, v in c.to_dict().items() if k not in ("index", "out")}
        return import_imdl(c.index, c.out, **{**kwargs, **_placement(c.copy, c.link, c.out)})

    return _run_cli("bpiml import-imdl", ImdlImportConfig, argv, run)


def cli_import_coco(argv: list[str]) -> int:
    """`bpiml import-coco --coco-json X.json [--image-root DIR] [--out STORE] ...`"""

    def run(c: CocoImportConfig) -> ImportSummary:
        root = c.image_root or storage.parent(c.coco_json)
        kwargs = {k: v for k, v in c.to_dict().items() if k not in ("coco_json", "image_root", "out")}
        kwargs["category_ids"] = kwargs["category_ids"] or None
        return import_coco(c.coco_json, root, c.out, **{**kwargs, **_placement(c.copy, c.link, c.out)})

    return _run_cli("bpiml import-coco", CocoImportConfig, argv, run)
