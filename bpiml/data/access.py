"""What an object-store error means for the user: credentials missing or refused, endpoint unreachable.

    raise access.error(uri, err) from err    # a PermissionError whose message says what to fix
"""

from __future__ import annotations

CREDENTIALS = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where the job runs; under "
               "`ray job submit` pass them in --runtime-env-json env_vars or the pods' environment")
HINTS = {
    "NoCredentialsError": f"no S3 credentials found: {CREDENTIALS}",
    "PartialCredentialsError": f"incomplete S3 credentials: {CREDENTIALS}",
    "InvalidAccessKeyId": f"the S3 access key was refused: {CREDENTIALS}",
    "SignatureDoesNotMatch": f"the S3 secret key was refused: {CREDENTIALS}",
    "AccessDenied": "access denied: these credentials may not read or write there (bucket policy or IAM role)",
    "EndpointConnectionError": "cannot reach the S3 endpoint: check --s3-endpoint / AWS_ENDPOINT_URL and the network",
    "NoSuchBucket": "the bucket does not exist (or these credentials cannot see it)",
    "Forbidden": f"S3 refused the request (403): the credentials are wrong or may not read there: {CREDENTIALS}",
}


def explain(err: BaseException) -> str:
    """The hint for the most specific known error name in `err` or its causes ('' when none is known)."""
    texts, seen = [], err
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__} {seen}")
        seen = seen.__cause__ or seen.__context__
    return next((hint for name, hint in HINTS.items() if any(name in t for t in texts)), "")


def error(uri: str, err: BaseException, doing: str = "access") -> PermissionError:
    hint = explain(err)
    return PermissionError(f"cannot {doing} {uri}: {hint + ' (' if hint else ''}{type(err).__name__}: {err}"
                           f"{')' if hint else ''}")
