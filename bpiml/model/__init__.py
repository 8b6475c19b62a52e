"""The prompt-free student: TinyViT backbone + Memory-Guided Gated Fusion Module (MGFM)."""

from bpiml.model.memory_bank import memory_usage_stats
from bpiml.model.student import Student, StudentConfig, build_student

__all__ = ["Student", "StudentConfig", "build_student", "memory_usage_stats"]
