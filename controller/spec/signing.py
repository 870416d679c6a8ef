"""Who must have signed a module before modship registers, builds or loads it.

    # $MODSHIP_HOME/signing.yaml (or the file MODSHIP_SIGNING names)
    requireSignature: true
    trustedKeys: [keys/ml-team.pub.pem]      # PEM public keys (elliptic curve); relative to this file

Without the file nothing is required and nothing is verified. With trusted keys, a module that
carries a signature has it verified (a bad one is always refused); ``requireSignature`` also refuses
a module that carries none.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from controller.spec import parse
from controller.spec.base import Spec


class SigningPolicy(Spec):
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = Field(default=(), description="PEM public keys; relative to the policy file")

    @model_validator(mode="after")
    def _keys(self) -> SigningPolicy:
        if self.require_signature and not self.trusted_keys:
            raise ValueError("requireSignature needs at least one of trustedKeys")
        return self

    @property
    def active(self) -> bool:
        """True when modules are checked at all (some key is trusted)."""
        return bool(self.trusted_keys)


def load(path: Path) -> SigningPolicy:
    """The policy in ``path``; none (nothing required) when the file does not exist."""
    if not path.exists():
        return SigningPolicy()
    policy = parse.load(SigningPolicy, path)
    keys = tuple(k if k.is_absolute() else (path.parent / k) for k in policy.trusted_keys)
    return policy.model_copy(update={"trusted_keys": keys})
