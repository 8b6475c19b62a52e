"""Human review of pseudo masks: Label Studio export and import, a static review page (`bpiml review`)."""
