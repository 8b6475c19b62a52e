"""Plumbing shared by the jobs: joining Ray, MLflow tracking, the local service stack."""
