"""Entrypoints: the CLI (typer), the local controller API, the Kubernetes operator (kopf)."""
