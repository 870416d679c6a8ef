"""The allocator settings every served revision runs with (locally and in its Kubernetes pods).

A module of its own so the operator (whose image has no numpy or BentoML) can read it without
importing the serving pipeline."""

from __future__ import annotations

# glibc's default lets the mmap threshold rise to the largest block ever freed (up to 32 MB); after
# that, a model's big per-batch buffers come from the heap, which fragments and never shrinks: a worker
# serving batches of mixed sizes grew from ~240 MB to ~900 MB and stayed there. A fixed threshold keeps
# large buffers mmapped, so they go back to the system when freed (~5 % more CPU per large batch, RSS
# flat at ~180 MB). Users can override it in the environment.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
