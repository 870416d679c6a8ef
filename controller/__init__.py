"""modship: ship ML systems assembled from pretrained modules.

The import package is ``controller``; the distribution and the CLI are ``modship``.
Data flows one way: spec (parse) -> plan (pure decisions) -> apply (the only I/O) -> ports.
"""

import logging

from controller.errors import IntegrityError, ModshipError, NotFound, SpecError, Unavailable

logging.getLogger("modship").addHandler(logging.NullHandler())  # a library: the application configures logging

__version__ = "0.1.0"

__all__ = ["IntegrityError", "ModshipError", "NotFound", "SpecError", "Unavailable", "__version__"]
