"""Compatibility of contracts: table tests for each rule, hypothesis properties for the whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.registry import compat
from controller.spec.modules import Calibration, Contract, Metadata, Port, Provenance

L6 = "all-minilm-l6-v2"
L3 = "paraphrase-minilm-l3-v2"
LABELS = ("business", "entertainment", "politics", "sport", "tech")


def emb(space: str | None = L6, dim: int = 384, dtype: str = "float32") -> Port:
    return Port(dtype=dtype, shape=(-1, dim), space=space)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("out", "inp", "fields"),
    [
        (emb(), emb(), []),
        (emb(L3), emb(L6), ["space"]),  # same shape, different meaning
        (emb(None), emb(L6), ["space"]),  # producer does not say
        (emb(L6), emb(None), []),  # consumer does not care
        (emb(dim=768), emb(), ["shape"]),
        (emb(dtype="float64"), emb(), ["dtype"]),
        (emb(dtype="float32"), emb(dtype="float64"), []),  # safe widening
        (Port(dtype="float32", shape=(-1, 5), labels=LABELS), Port(dtype="float32", shape=(-1, 5), labels=LABELS), []),
        (Port(dtype="float32", labels=LABELS), Port(dtype="float32", labels=LABELS[::-1]), ["labels"]),
        (Port(dtype="float32", labels=LABELS[:4]), Port(dtype="float32", labels=("a", "b", "c", "d")), ["labels"]),
        (Port(dtype="float32"), Port(dtype="float32", labels=LABELS), ["labels"]),
        (Port(dtype="float32", range=(0, 1)), Port(dtype="float32", range=(-1, 1)), []),
        (Port(dtype="float32", range=(-1, 1)), Port(dtype="float32", range=(0, 1)), ["range"]),
        (Port(dtype="float32"), Port(dtype="float32", range=(0, 1)), ["range"]),
        (Port(dtype="string", tokenizer="sha256:a"), Port(dtype="string", tokenizer="sha256:b"), ["tokenizer"]),
        (Port(dtype="string"), Port(dtype="string", tokenizer="sha256:b"), []),  # raw text
        (Port(dtype="int64"), Port(dtype="int64", tokenizer="sha256:b"), ["tokenizer"]),  # token ids
        (Port(dtype="float32", shape=(-1, 384)), Port(dtype="float32", shape=(-1, 384, 1)), ["shape"]),
        (emb(L3, dim=768), emb(L6), ["shape", "space"]),  # every problem, not the first
    ],
)
def test_port_rules(out: Port, inp: Port, fields: list[str]) -> None:
    assert [p.field for p in compat.check_ports(out, inp)] == fields


def test_space_reason_names_both_spaces() -> None:
    [problem] = compat.check_ports(emb(L3), emb(L6))
    assert L3 in problem.reason and L6 in problem.reason and "adapter" in problem.reason


def test_port_selection() -> None:
    two = Contract(inputs={"a": emb(), "b": emb()}, outputs={"x": emb()})
    one = Contract(inputs={"x": emb()}, outputs={"y": emb()})
    assert [p.field for p in compat.check_contracts(one, two)] == ["port"]
    assert compat.check_contracts(one, two, in_port="b") == []
    assert "no input port 'c'" in compat.check_contracts(one, two, in_port="c")[0].reason


def test_matrix_is_every_pair_in_order() -> None:
    v1 = Contract(inputs={"t": Port(dtype="string")}, outputs={"e": emb(L6)})
    v2 = Contract(inputs={"t": Port(dtype="string")}, outputs={"e": emb(L3)})
    head = Contract(inputs={"e": emb(L6)}, outputs={"p": Port(dtype="float32")})
    cells = compat.matrix([("enc@1", v1), ("enc@2", v2)], [("head@1", head)])
    assert [(c.producer, c.consumer, c.compatible) for c in cells] == [
        ("enc@1", "head@1", True),
        ("enc@2", "head@1", False),
    ]
    assert cells[1].to_json()["problems"][0]["field"] == "space"  # type: ignore[index]


# -- properties ----------------------------------------------------------------------------------

dtypes = st.sampled_from(["string", "float32", "float64", "int32", "int64", "bool"])
dims = st.one_of(st.just(-1), st.integers(1, 8))
label_sets = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=5, unique=True).map(tuple)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[float, float]:
    lo = draw(st.floats(-10, 10, allow_nan=False))
    return lo, lo + draw(st.floats(0, 10, allow_nan=False))


@st.composite
def ports(draw: st.DrawFn) -> Port:
    labels = draw(st.none() | label_sets)
    shape = draw(st.lists(dims, max_size=3).map(tuple))
    if labels is not None and shape:
        shape = (*shape[:-1], len(labels))
    return Port(
        dtype=draw(dtypes),
        shape=shape,
        space=draw(st.none() | st.sampled_from([L6, L3])),
        tokenizer=draw(st.none() | st.sampled_from(["sha256:a", "sha256:b"])),
        labels=labels,
        range=draw(st.none() | ranges()),
    )


@given(ports())
def test_equal_ports_are_compatible(port: Port) -> None:
    assert compat.check_ports(port, port) == []


@given(ports(), ports())
def test_result_is_deterministic_and_reasons_are_named(out: Port, inp: Port) -> None:
    first = compat.check_ports(out, inp)
    assert first == compat.check_ports(out, inp)
    assert all(p.field in {"dtype", "shape", "space", "tokenizer", "labels", "range"} and p.reason for p in first)


@given(ports(), ports(), st.text(max_size=20), st.text(max_size=20))
def test_descriptions_never_matter(out: Port, inp: Port, d1: str, d2: str) -> None:
    assert compat.check_ports(out, inp) == compat.check_ports(
        out.model_copy(update={"description": d1}), inp.model_copy(update={"description": d2})
    )


@given(ports(), ports())
def test_a_consumer_that_states_nothing_accepts_any_meaning(out: Port, inp: Port) -> None:
    """Dropping every meaning requirement of the consumer can only remove problems."""
    relaxed = inp.model_copy(update={"space": None, "tokenizer": None, "labels": None, "range": None})
    remaining = {p.field for p in compat.check_ports(out, relaxed)}
    assert remaining <= {"dtype", "shape"}
    assert remaining <= {p.field for p in compat.check_ports(out, inp)}


metadata_st = st.builds(
    Metadata,
    description=st.none() | st.text(max_size=10),
    provenance=st.builds(Provenance, training_data=st.none() | st.text(max_size=10)),
    calibration=st.builds(Calibration, ece=st.none() | st.floats(0, 1)),
    license=st.sampled_from(["MIT", "Apache-2.0", "proprietary"]),
    stability=st.sampled_from(["stable", "experimental"]),
    owners=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=2).map(tuple),
)


@given(ports(), ports(), metadata_st, metadata_st)
def test_module_compat_never_depends_on_metadata(out: Port, inp: Port, m1: Metadata, m2: Metadata) -> None:
    """Compatibility is a function of contracts: metadata unrelated to them never changes it."""
    from controller.spec.modules import ModuleManifest, Runtime

    def module(port_out: Port, port_in: Port, md: Metadata) -> ModuleManifest:
        return ModuleManifest(
            name="m",
            role="head",
            runtime=Runtime(kind="linear"),
            contract=Contract(inputs={"i": port_in}, outputs={"o": port_out}),
            metadata=md,
        )

    a1, b1 = module(out, out, m1), module(inp, inp, m1)
    a2, b2 = module(out, out, m2), module(inp, inp, m2)
    assert compat.check_contracts(a1.contract, b1.contract) == compat.check_contracts(a2.contract, b2.contract)
