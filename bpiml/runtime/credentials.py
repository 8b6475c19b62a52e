"""Credentials stay in the environment: none travels inside a URI.

A user may give MLflow's location as `http://user:password@host:port`. Such a URI is copied into
places that are shown or kept: the Ray workers' runtime environment (the dashboard's jobs API, Ray's
`runtime_env_agent.log`), MLflow's own "View run ... at" lines, the jobs' result JSON. At a job's
start `move_uri_credentials()` takes the user and password out of `MLFLOW_TRACKING_URI` and into
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, the variables MLflow's client reads itself.
A local Ray inherits them from the driver; on a cluster every node must have them in its own
environment (docs/deployment.md), as it has its S3 credentials.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import unquote, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

TRACKING_URI = "MLFLOW_TRACKING_URI"
TRACKING_USER, TRACKING_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def split_userinfo(uri: str) -> tuple[str, str, str]:
    """`scheme://user:pass@host/path` -> (`scheme://host/path`, user, pass); other URIs unchanged, '', ''."""
    parts = urlsplit(uri)
    if not parts.scheme or "@" not in parts.netloc:
        return uri, "", ""
    host = parts.netloc.rpartition("@")[2]
    return (urlunsplit(parts._replace(netloc=host)), unquote(parts.username or ""),
            unquote(parts.password or ""))


def move_uri_credentials(environ: dict[str, str] | None = None) -> bool:
    """Move a user and password out of MLFLOW_TRACKING_URI into MLflow's own variables (a value that
    is already set there wins). Returns True when the URI held credentials."""
    env = os.environ if environ is None else environ
    uri, user, password = split_userinfo(env.get(TRACKING_URI, ""))
    if not (user or password):
        return False
    env[TRACKING_URI] = uri
    for key, value in ((TRACKING_USER, user), (TRACKING_PASSWORD, password)):
        if value and not env.get(key):
            env[key] = value
    logger.info("%s held credentials: they now come from %s / %s (a cluster's nodes need those variables in "
                "their own environment)", TRACKING_URI, TRACKING_USER, TRACKING_PASSWORD)
    return True
