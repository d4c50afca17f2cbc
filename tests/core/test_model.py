"""pybk.core.model: value classes declared like attrs classes, made without generating code,
and usable through the attrs API and cattrs."""

from __future__ import annotations

import copy
import pickle
import sys
from typing import ClassVar

import attrs
import pytest

from pybk.core.converter import get_converter, setting, structure_options
from pybk.core.errors import UsageError
from pybk.core.model import (
    NOTHING,
    Factory,
    FrozenError,
    Model,
    asdict,
    astuple,
    evolve,
    field,
    fields,
    fields_dict,
    has,
    resolve_types,
)


def _tupled(value):
    return tuple(value)


class Point(Model):
    x: int = 0
    y: int = 0
    tags: tuple[str, ...] = field(factory=tuple, converter=_tupled)
    seen: list[int] = field(factory=list, eq=False, repr=False)
    LIMIT: ClassVar[int] = 10


class Labelled(Point, kw_only=True):
    label: str
    note: dict[str, str] = field(factory=dict, hash=False)


class Counter(Model, frozen=False):
    n: int = 0


class Handle(Model, eq=False):
    name: str = ""


class Derived(Model):
    a: int = 1
    double: int = 0

    def __post_init__(self) -> None:
        if not self.double:
            object.__setattr__(self, "double", 2 * self.a)


def test_init_by_position_and_name_with_defaults_factories_and_converters():
    p = Point(1, tags=["a", "b"])
    assert (p.x, p.y, p.tags, p.seen) == (1, 0, ("a", "b"), [])
    assert Point().seen is not Point().seen  # a factory makes each default anew
    assert Point(tags=iter("xy")).tags == ("x", "y")  # converters run on given values
    assert [f.name for f in fields(Point)] == ["x", "y", "tags", "seen"]  # no ClassVar
    with pytest.raises(TypeError, match="takes 4 positional arguments but 5 were given"):
        Point(1, 2, (), [], 5)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(z=1)


def test_kw_only_fields_and_inheritance():
    lab = Labelled(3, label="p")
    assert [f.name for f in fields(Labelled)] == ["x", "y", "tags", "seen", "label", "note"]
    assert (lab.x, lab.label) == (3, "p")
    with pytest.raises(TypeError, match="missing required argument: 'label'"):
        Labelled(3)
    with pytest.raises(TypeError):
        Labelled(3, 4, (), [], "p")  # label takes no position
    assert Labelled.__slots__ == ("label", "note")  # the base's slots are not repeated


def test_frozen_and_mutable():
    p = Point()
    with pytest.raises(FrozenError):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.x
    with pytest.raises(AttributeError):
        p.other = 1  # slotted: no __dict__
    c = Counter()
    c.n += 1
    assert c.n == 1 and c == Counter(1)
    with pytest.raises(TypeError, match="unhashable"):
        hash(c)


def test_equality_and_hashing_by_value():
    assert Point(1, 2, ["a"]) == Point(1, 2, ("a",)) and hash(Point(1, 2)) == hash(Point(1, 2))
    assert Point(1, 2, seen=[1]) == Point(1, 2, seen=[2])  # eq=False field left out
    assert Point(1) != Point(2) and Point(1) != Labelled(1, label="")
    assert {Point(1): "a"}[Point(1)] == "a"
    # hash=False: compared, not hashed (a dict field keeps the object hashable)
    a, b = Labelled(label="l", note={"k": "v"}), Labelled(label="l", note={"k": "w"})
    assert a != b and hash(a) == hash(b)
    # eq=False on the class: identity
    h = Handle("x")
    assert h == h and h != Handle("x") and len({h, Handle("x")}) == 2


def test_repr_pickle_copy_evolve_post_init():
    p = Point(1, 2, ("a",), [9])
    assert repr(p) == "Point(x=1, y=2, tags=('a',))"  # repr=False field hidden
    for clone in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert clone == p and clone.seen == [9]
    moved = evolve(p, y=5, tags=["b"])
    assert moved == Point(1, 5, ("b",)) and p.y == 2  # converters run again
    assert Derived(3).double == 6 and Derived(3, 7).double == 7
    assert evolve(Derived(3), a=4) == Derived(4, 6)  # evolve keeps given values


def test_asdict_and_astuple_match_attrs():
    @attrs.frozen
    class Inner:
        v: tuple = (1, 2)

    class InnerModel(Model):
        v: tuple = (1, 2)

    @attrs.frozen
    class Outer:
        inner: Inner = Inner()
        items: list = attrs.field(factory=lambda: [Inner()])
        table: dict = attrs.field(factory=lambda: {"k": Inner()})

    class OuterModel(Model):
        inner: InnerModel = InnerModel()
        items: list = field(factory=lambda: [InnerModel()])
        table: dict = field(factory=lambda: {"k": InnerModel()})

    assert asdict(OuterModel()) == attrs.asdict(Outer())
    assert astuple(OuterModel()) == attrs.astuple(Outer())


def test_making_a_model_class_compiles_nothing():
    """attrs compiles generated methods for each class; a model class is made from shared
    code (checked with the interpreter's ``compile``/``exec`` audit events)."""
    events: list[str] = []
    watching = [True]

    def hook(event, args):
        if watching[0] and event in ("compile", "exec"):
            events.append(event)

    sys.addaudithook(hook)
    try:
        class Made(Model):
            a: str = ""
            b: tuple[int, ...] = field(factory=tuple, converter=_tupled)

        made = Made("x", [1])
        assert made == Made("x", (1,)) and hash(made) == hash(Made("x", (1,)))
    finally:
        watching[0] = False
    assert events == []

    events_attrs: list[str] = []
    watching[0] = True
    try:
        @attrs.frozen
        class Compared:
            a: str = ""
    finally:
        watching[0] = False
        events_attrs.extend(events)
    assert events_attrs  # the same check sees attrs compiling


def test_attrs_api_and_cattrs_on_model_classes():
    assert attrs.has(Point) and has(Point) and not has(int)
    assert [a.name for a in attrs.fields(Labelled)] == [f.name for f in fields(Labelled)]
    by_name = attrs.fields_dict(Labelled)
    assert by_name["label"].default is attrs.NOTHING and by_name["label"].kw_only
    assert isinstance(by_name["tags"].default, attrs.Factory)
    assert attrs.evolve(Point(1), y=3) == Point(1, 3)
    assert attrs.asdict(Point(1, seen=[2])) == {"x": 1, "y": 0, "tags": (), "seen": [2]}
    # cattrs structures a model class (nested ones too) through pybk's converter
    conv = get_converter()
    assert conv.structure({"x": 4, "tags": ["t"]}, Point) == Point(4, tags=("t",))
    # attrs classes are still fields()-able: a plugin's own options may be attrs classes
    @attrs.frozen
    class PluginOptions:
        path: str

    assert has(PluginOptions) and [a.name for a in fields(PluginOptions)] == ["path"]
    assert evolve(PluginOptions("a"), path="b") == PluginOptions("b")
    assert fields_dict(Point)["x"].default == 0 and fields(Point)[2].default.__class__ is Factory
    assert fields(Labelled)[4].default is NOTHING


class Opts(Model, kw_only=True):
    dest: str
    level: int = setting("compression-level", default=3)


def test_options_of_a_model_class_structured_from_cli_attrs():
    assert structure_options(Opts, {"dest": "d", "compression-level": "7"},
                             where="--output") == Opts(dest="d", level=7)
    with pytest.raises(UsageError, match='missing required attribute "dest"'):
        structure_options(Opts, {}, where="--output")
    with pytest.raises(UsageError, match='unknown attribute "levl"'):
        structure_options(Opts, {"dest": "d", "levl": "1"}, where="--output")


def test_resolve_types_turns_annotations_into_types():
    class Typed(Model):
        a: int = 0
        b: list[str] = field(factory=list)

    assert fields(Typed)[0].type == "int"  # postponed annotations are strings
    resolve_types(Typed)
    assert fields(Typed)[0].type is int and fields(Typed)[1].type == list[str]
