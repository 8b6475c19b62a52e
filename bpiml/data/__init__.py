"""Stage 1, data: stores and manifests, image I/O, boxes, importers, splits, the sample store, degradations."""
