"""A declared contract against the model's own description, and requirement conflicts."""

from __future__ import annotations

import pytest

from controller.errors import SpecError
from controller.registry import requirements, signatures
from controller.spec.modules import Column, Contract, Port

F16 = Port(dtype="float32", shape=(-1, 16))


@pytest.mark.parametrize(
    ("declared", "actual", "reasons"),
    [
        (F16, F16, []),
        (Port(dtype="float32", shape=(-1, 16), space="s"), Port(dtype="float32", shape=(-1, -1)), []),  # says more
        (Port(dtype="float64", shape=(-1, 16)), F16, ["dtype is float32, the contract says float64"]),
        (Port(dtype="float32", shape=(-1, 8)), F16, ["dimension 1 is 16, the contract says 8"]),
        (Port(dtype="float32", shape=(-1,)), F16, ["shape is [-1, 16], the contract says [-1]"]),
        (
            Port(dtype="table", columns={"a": Column(dtype="int64"), "z": Column(dtype="string")}),
            Port(dtype="table", columns={"a": Column(dtype="float64"), "b": Column(dtype="string")}),
            [
                "column 'a' is float64, the contract says int64",
                "column 'b' is missing from the contract",
                "column 'z' is not in the model's signature",
            ],
        ),
    ],
)
def test_contradictions(declared: Port, actual: Port, reasons: list[str]) -> None:
    assert signatures.contradictions(declared, actual) == reasons


def test_contract_contradictions_name_the_port() -> None:
    derived = Contract(inputs={"input": F16}, outputs={"output": Port(dtype="float32", shape=(-1, 3))})
    declared = Contract(inputs={"x": F16}, outputs={"output": Port(dtype="float32", shape=(-1, 4))})
    assert signatures.contract_contradictions(declared, derived) == [
        ("contract.inputs", "the model has input 'input', the contract does not"),
        ("contract.inputs.x", "the model has no input 'x' (has ['input'])"),
        ("contract.outputs.output", "dimension 1 is 3, the contract says 4"),
    ]


def test_overlay_adds_meaning_to_the_only_port() -> None:
    derived = Contract(inputs={"input": F16}, outputs={"output": Port(dtype="float32", shape=(-1, 2))})
    doc = signatures.overlay(
        derived, {"outputs": {"*": {"labels": ["no", "yes"]}}, "inputs": {"input": {"space": "s"}}}
    )
    assert doc["outputs"]["output"]["labels"] == ["no", "yes"]  # type: ignore[index]
    assert doc["inputs"]["input"]["space"] == "s"  # type: ignore[index]
    two = Contract(inputs={"a": F16, "b": F16}, outputs={"o": F16})
    with pytest.raises(SpecError, match="name the port"):
        signatures.overlay(two, {"inputs": {"*": {"space": "s"}}})


def test_requirement_conflicts_name_both_modules_and_the_package() -> None:
    found = requirements.conflicts(
        [("a@1", "numpy==1.26.4"), ("b@1", "NumPy==2.4.6"), ("c@1", "numpy>=1.20"), ("d@1", "scikit-learn<2")]
    )
    assert [str(c) for c in found] == [
        "a@1 needs 'numpy==1.26.4' and b@1 needs 'NumPy==2.4.6': no version of numpy satisfies both"
    ]
    assert requirements.conflicts([("a@1", "scikit-learn==1.9.1"), ("b@1", "scikit-learn>=1.5,<2")]) == []
    assert requirements.conflicts([("a@1", "pandas==2.0"), ("b@1", "pandas<2")])  # a pin outside a range


def test_requirements_files_are_read_and_bad_lines_named() -> None:
    text = "# generated\nmlflow==3.17.2\n\n-r other.txt\nscikit-learn==1.9.1  # the model\n"
    assert requirements.parse_file(text) == ("mlflow==3.17.2", "scikit-learn==1.9.1")
    with pytest.raises(ValueError, match="line 2"):
        requirements.parse_file("numpy\nnot a requirement!!\n")
    assert requirements.union([("a", "numpy==2.4.6"), ("b", "numpy==2.4.6"), ("b", "mlflow")]) == [
        "mlflow",
        "numpy==2.4.6",
    ]
