"""Stage 2, pseudo-labeling: a frozen teacher turns each image's boxes into a pseudo mask, on Ray Data."""
