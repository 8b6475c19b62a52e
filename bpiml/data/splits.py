"""Train / val / test splits that hold out whole groups (source scenes), deterministically."""

from __future__ import annotations

import posixpath
import re

import numpy as np

CVIP_SCENE_PATTERN = r"im\d+"  # CVIP: Tp/im11_t.jpg, Tp/im1_out_r90_im1.jpg, Au/d0_im7.jpg -> im11, im1, im7


def scene_key(path: str, pattern: str = CVIP_SCENE_PATTERN) -> str:
    """The source-scene key of an image path: the first match of `pattern` in its stem, else the stem."""
    stem = posixpath.splitext(posixpath.basename(path))[0]
    m = re.search(pattern, stem)
    return (m.group(1) if m and m.groups() else m.group(0)) if m else stem


def assign_splits(keys: list[str], val_fraction: float, test_fraction: float = 0.0, seed: int = 0) -> list[str]:
    """A split per item holding out whole groups (`keys`), each held-out split close to its fraction of items.

    Groups are visited in a seeded random order; a group joins test (then val) while that brings the
    split's item count closer to its target. Deterministic for a given seed.
    """
    sizes: dict[str, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    order = [sorted(sizes)[i] for i in np.random.default_rng(seed).permutation(len(sizes))]
    targets = {"test": test_fraction * len(keys), "val": val_fraction * len(keys)}
    counts = {"test": 0, "val": 0}
    group_split: dict[str, str] = {}
    for key in order:
        group_split[key] = "train"
        for split in ("test", "val"):
            after = counts[split] + sizes[key]
            if abs(after - targets[split]) < abs(counts[split] - targets[split]):
                group_split[key], counts[split] = split, after
                break
    for split in ("test", "val"):  # a wanted split never ends up empty while train has 2+ groups
        train = [k for k in order if group_split[k] == "train"]
        if targets[split] > 0 and counts[split] == 0 and len(train) > 1:
            group_split[min(train, key=lambda k: sizes[k])] = split
    return [group_split[k] for k in keys]
