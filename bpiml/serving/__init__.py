"""Online serving: a registered model behind an HTTP API on Ray Serve (`app.py`), its routes (`http.py`)."""
