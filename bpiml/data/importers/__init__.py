"""Getting data in: IMDL-BenCo lists and COCO detection files -> store manifests."""
