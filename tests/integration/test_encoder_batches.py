"""The example text encoders on real weights: a batch of texts of mixed lengths, run as
length-bucketed sub-batches, gives the same embeddings as each text run alone."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from controller.pipeline import kernels
from controller.spec.modules import ModuleManifest
from tests.support import examples

pytestmark = pytest.mark.slow

TEXTS = [
    "Shares rose.",
    "The striker scored twice as the champions won the derby on a wet Saturday afternoon in the north.",
    "Ministers unveiled the budget.",
    " ".join(["The new smartphone chip doubles battery life, the firm says, and ships next spring."] * 6),
    "Rain.",
    "A film festival opened with a premiere that critics called the most daring of the decade so far.",
    *(f"Text number {i} about markets, football, elections and films." for i in range(30)),
]


@pytest.mark.parametrize("name", ["text-encoder-v1", "text-encoder-v2"])
def test_a_mixed_batch_embeds_like_each_text_alone(name: str) -> None:
    root, _ = examples.build()
    manifest = ModuleManifest.model_validate(yaml.safe_load((root / name / "module.yaml").read_text()))
    kernel = kernels.load(root / name, manifest, faults=False)
    together = kernel({"text": TEXTS})["embedding"]
    alone = np.vstack([kernel({"text": [t]})["embedding"] for t in TEXTS])
    assert together.shape == alone.shape == (len(TEXTS), alone.shape[1])
    assert together.dtype == np.float32
    assert float(np.abs(together - alone).max()) < 1e-5
