"""The composed pipeline: module kernels, guards, caching, fallbacks, flags, telemetry, and isolated
workers for untrusted modules (``isolation``, ``worker``, ``wire``).

This is what runs inside a system's Bento (``bentos/``) and in contract tests before a build.
"""
