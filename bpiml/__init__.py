"""bpiml: image manipulation localization trained from bounding boxes."""

__version__ = "0.1.0"
