"""modship: ship ML systems assembled from pretrained modules.

The import package is ``controller``; the distribution and the CLI are ``modship``.
Data flows one way: spec (parse) -> plan (pure decisions) -> apply (the only I/O) -> ports.
"""

from controller.errors import IntegrityError, ModshipError, NotFound, SpecError, Unavailable

__version__ = "0.1.0"

__all__ = ["IntegrityError", "ModshipError", "NotFound", "SpecError", "Unavailable", "__version__"]
