"""The composed pipeline: module kernels, guards, caching, fallbacks, flags and telemetry.

This is what runs inside a system's Bento (``bentos/``) and in contract tests before a build.
"""
