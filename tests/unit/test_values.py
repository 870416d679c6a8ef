"""Port values: JSON to batches and back, for text, tensors and tables, with every refusal named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from controller.pipeline import values
from controller.spec.modules import Column, Port

IMAGE = Port(dtype="float32", shape=(-1, 2, 2), range=(0, 16))
TABLE = Port(
    dtype="table",
    columns={"age": Column(dtype="int64", range=(0, 130)), "income": Column(dtype="float64", required=False),
             "city": Column(dtype="string")},
)  # fmt: skip


def test_a_single_tensor_item_is_a_batch_of_one() -> None:
    one = values.decode("image", IMAGE, [[1, 2], [3, 4]])
    many = values.decode("image", IMAGE, [[[1, 2], [3, 4]], [[0, 0], [0, 16]]])
    assert one.shape == (1, 2, 2) and one.dtype == np.float32
    assert many.shape == (2, 2, 2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([[1, 2, 3], [3, 4, 5]], "dimension 2 is 3"),
        ([1, 2], "1 dimension(s)"),
        ([[1, 2], [3, 99]], "outside the contract range"),
        ([[1, "x"], [3, 4]], "not a rectangular array"),
        ([[[1, 2]], [[1, 2], [3, 4]]], "not a rectangular array"),
        ([[1, float("nan")], [3, 4]], "NaN or infinity"),
    ],
)
def test_bad_tensors_are_refused_naming_the_input(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match="input 'image'") as err:
        values.decode("image", IMAGE, raw)
    assert message in str(err.value)


def test_records_become_typed_columns() -> None:
    t = values.decode("person", TABLE, [{"age": 30, "city": "Oslo"}, {"age": 41, "income": 5.5, "city": "Rome"}])
    assert isinstance(t, values.Table) and t.rows == 2
    assert t["age"].dtype == np.int64 and np.isnan(t["income"][0]) and t["city"] == ["Oslo", "Rome"]
    assert values.size(values.decode("person", TABLE, {"age": 3, "city": "Bonn"})) == 1
    frame = t.to_frame()
    assert list(frame.columns) == ["age", "income", "city"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"city": "Oslo"}, "missing required column 'age'"),
        ({"age": 3, "city": "Oslo", "zip": 1}, "unknown column 'zip'"),
        ({"age": 300, "city": "Oslo"}, "outside the contract range"),
        ({"age": "old", "city": "Oslo"}, "column 'age' does not hold int64"),
        ({"age": 3, "city": 5}, "column 'city' must hold text"),
        ("Oslo", "must be a record"),
        ([], "is empty"),
    ],
)
def test_bad_records_are_refused_naming_the_column(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match="input 'person'") as err:
        values.decode("person", TABLE, raw)
    assert message in str(err.value)


def test_concat_and_split_are_inverse() -> None:
    a = values.decode("person", TABLE, [{"age": 1, "city": "A"}])
    b = values.decode("person", TABLE, [{"age": 2, "city": "B"}, {"age": 3, "city": "C"}])
    joined = values.concat([a, b])
    assert joined.rows == 3 and joined["city"] == ["A", "B", "C"]
    back = values.split(joined, [1, 2])
    assert back[1].records() == b.records()
    arrays = values.split(values.concat([np.zeros((1, 2)), np.ones((2, 2))]), [1, 2])
    assert arrays[1].tolist() == [[1, 1], [1, 1]]
    assert values.split(values.concat([["x"], ["y", "z"]]), [1, 2]) == [["x"], ["y", "z"]]


def test_encode_rounds_floats_unless_asked_not_to() -> None:
    v = np.asarray([[0.1234567891]], dtype=np.float64)
    assert values.encode(v) == [[0.123457]]
    assert values.encode(v, digits=None) == [[0.1234567891]]
