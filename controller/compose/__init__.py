"""System -> Revision: resolving, pinning and hashing a composed system (pure), lock files."""
