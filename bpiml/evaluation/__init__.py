"""Stage 5, evaluation: metrics, inference, batch prediction, evaluation, audit and reports."""
