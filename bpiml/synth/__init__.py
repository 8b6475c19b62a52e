"""Forgery synthesis: ordinary photos -> spliced, copy-moved and inpainted images with exact masks."""
