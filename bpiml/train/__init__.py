"""Stage 4, training: the student learns from the pseudo masks on Ray Train."""
