"""The synthesizer job's configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from bpiml.config import (
    BaseConfig,
    check_job_resources,
    check_range,
    cpus_field,
    field,
    gpus_field,
    reject_rate_field,
    resource_wait_field,
    s3_endpoint_field,
    workers_field,
)

DEFAULT_PHOTOS = ".bpiml/photos"  # the embedded default: scikit-image's bundled photos, written there on first use
DEFAULT_OUT = ".bpiml/synth"
MIX_KEYS = ("splice", "copy_move", "removal", "authentic")


@dataclasses.dataclass
class SynthConfig(BaseConfig):
    photos: str = field(DEFAULT_PHOTOS, "photo pool: a folder of images or a store (its authentic records), local or s3://")
    out: str = field(DEFAULT_OUT, "output store: images/, masks/, manifest/part-*.jsonl, summary.json, gallery.html")
    n: int = field(1000, "images to make (a rerun with a larger n adds the missing ones)")
    seed: int = field(0, "random seed: the same seed and options make the same images, byte for byte")
    splice: float = field(0.35, "share of splicing forgeries (a region of another photo)")
    copy_move: float = field(0.3, "share of copy-move forgeries (a region copied within the image, scaled/rotated/flipped)")
    removal: float = field(0.15, "share of removals (a region inpainted away)")
    authentic: float = field(0.2, "share of authentic images (same post-processing, no boxes, empty mask)")
    shapes: str = field("", "a store whose GT masks lend object shapes to the regions ('' = polygons and superpixels)")
    all_photos: bool = field(False, "with a store as the pool, use every record's image, not only the authentic ones")
    pool_split: str = field("train", "with a store as the photo or shape pool, only its records of this split "
                            "('' = every split: a val/test image would leak into training data)")
    max_side: int = field(512, "base photos are cropped and resized so their long side is at most this")
    post_steps: int = field(3, "at most this many post-processing steps (resize, blur, noise, JPEG) per image")
    val_fraction: float = field(0.05, "share of images in the val split")
    box_pad: float = field(0.05, "boxes: tight mask boxes grown by this share of their side (like import-imdl --pad)")
    box_jitter: float = field(0.1, "boxes: each edge moved by up to this share of the side (a human's coarse box)")
    merge_distance: int = field(4, "boxes: components closer than this many pixels share one box")
    part_rows: int = field(64, "images per task and per manifest part: a killed run redoes at most the parts in flight")
    num_workers: int = workers_field(0, "synthesis tasks at once (0 = as many as the cluster's CPUs allow)")
    cpus_per_worker: float = cpus_field(1.0, "synthesis task (OpenCV uses that many threads)")
    gpus_per_worker: float | None = gpus_field("synthesis task (auto = 0: synthesis is CPU work)")
    gallery: int = field(24, "samples shown on gallery.html (0 = no gallery)")
    max_reject_rate: float = reject_rate_field(0.05)
    lock_ttl_s: float = field(120.0, "a writer lock without heartbeat for this long is taken over")
    resource_wait_s: float = resource_wait_field()
    s3_endpoint: str | None = s3_endpoint_field()

    def validate(self) -> None:
        super().validate()
        if not self.photos or not self.out:
            raise ValueError("photos and out must both be given")
        photos, out = self.photos.rstrip("/") + "/", self.out.rstrip("/") + "/"
        if photos.startswith(out) or out.startswith(photos):
            raise ValueError(f"out {self.out!r} and photos {self.photos!r} must not hold one another: a later run "
                             "would take earlier forgeries for photos")
        if self.pool_split not in ("", "train", "val", "test"):
            raise ValueError(f"pool_split must be '', train, val or test, not {self.pool_split!r}")
        check_range("n", self.n, 1)
        check_range("seed", self.seed, 0)
        for key in MIX_KEYS:
            check_range(key, getattr(self, key), 0)
        if sum(getattr(self, k) for k in MIX_KEYS) <= 0:
            raise ValueError(f"at least one of {', '.join(MIX_KEYS)} must be > 0")
        check_range("max_side", self.max_side, 64, 8192)
        check_range("post_steps", self.post_steps, 0, 8)
        check_range("val_fraction", self.val_fraction, 0, 1)
        check_range("box_pad", self.box_pad, 0, 1)
        check_range("box_jitter", self.box_jitter, 0, 0.49)
        check_range("merge_distance", self.merge_distance, -1)
        check_range("part_rows", self.part_rows, 1, 100_000)
        check_job_resources(self, min_workers=0, min_cpus=0.05)
        check_range("gallery", self.gallery, 0, 1000)
        check_range("lock_ttl_s", self.lock_ttl_s, 1)

    def mix(self) -> dict[str, float]:
        """Manipulation kind ("splice", "copy-move", "removal", "authentic") -> probability."""
        total = sum(getattr(self, k) for k in MIX_KEYS)
        return {k.replace("_", "-"): getattr(self, k) / total for k in MIX_KEYS}

    def recipe(self) -> dict[str, object]:
        """What decides the images, byte for byte: an output keeps one recipe (n, part_rows and the
        resources may change between runs: parts are named by the index range they hold)."""
        keep = ("photos", "seed", "splice", "copy_move", "removal", "authentic", "shapes", "all_photos", "pool_split",
                "max_side", "post_steps", "val_fraction", "box_pad", "box_jitter", "merge_distance")
        return {k: getattr(self, k) for k in keep}

    def recipe_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe(), sort_keys=True).encode()).hexdigest()[:16]
