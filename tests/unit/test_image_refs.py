"""The pure parts of `modship image build`: image references, the runtime's requirements and tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.adapters import images
from controller.errors import SpecError


@pytest.mark.parametrize(
    "ref",
    ["modship.local/topic-classifier:r0123456789ab", "registry.example.com:5000/ml/topic:r0123456789ab-cpu", "a:1"],
)
def test_good_references(ref: str) -> None:
    assert images.check_reference(ref, "--image") == ref


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("Topic:r1", "is not an image reference"),
        ("topic", "is not an image reference"),
        ("topic:", "is not an image reference"),
        ("a b:1", "is not an image reference"),
        ("modship.local/topic:latest", "never :latest"),
    ],
)
def test_bad_references_name_the_field(ref: str, says: str) -> None:
    with pytest.raises(SpecError, match=says) as e:
        images.check_reference(ref, "--image")
    assert e.value.field == "--image"


def test_runtime_requirements_are_the_serving_set_plus_the_modules(tmp_path: Path) -> None:
    (tmp_path / "env" / "python").mkdir(parents=True)
    (tmp_path / "env" / "python" / "requirements.txt").write_text(
        "bentoml==1.4.40\n# c\n-r other.txt\nscikit-learn>=1.4\n"
    )
    reqs = images.serving_requirements(tmp_path)
    names = {r.split("=")[0].split(">")[0] for r in reqs}
    assert {"bentoml", "numpy", "onnxruntime", "tokenizers", "model-signing"} <= names
    assert not names & {"mlflow", "kubernetes", "kopf", "typer", "pytest"}
    assert reqs[-2:] == ["bentoml==1.4.40", "scikit-learn>=1.4"]
    assert all("==" in r for r in reqs[:-2])  # pyproject's pins


def test_runtime_tag_changes_with_every_input() -> None:
    t = images.runtime_tag("sha256:a", ["x==1"], ["y==2"])
    assert t.startswith("modship.local/runtime:") and len(t.rsplit(":", 1)[1]) == 12
    assert t == images.runtime_tag("sha256:a", ["x==1"], ["y==2"])
    others = {images.runtime_tag("sha256:b", ["x==1"], ["y==2"]), images.runtime_tag("sha256:a", ["x==2"], ["y==2"]),
              images.runtime_tag("sha256:a", ["x==1"], ["y==3"])}  # fmt: skip
    assert t not in others and len(others) == 3
