"""The prompt-free student: TinyViT backbone + Memory-Guided Gated Fusion Module (MGFM).

The names below are imported on first use, so `bpiml.model.config` (read by the jobs' command lines)
does not pull in torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Student": "bpiml.model.student", "StudentConfig": "bpiml.model.config",
          "build_student": "bpiml.model.student", "memory_usage_stats": "bpiml.model.memory_bank"}

__all__ = ["Student", "StudentConfig", "build_student", "memory_usage_stats"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'bpiml.model' has no attribute {name!r}")
