"""Model classes: frozen value classes made without generating code.

pybk's value classes (LLB messages, config tables, plugin options, progress events, store rows)
are declared the way attrs declares them, as annotated class attributes::

    class Input(Model):
        digest: str = ""
        index: int = 0
        parents: tuple[str, ...] = field(factory=tuple, converter=tuple)

and behave like ``@attrs.frozen`` classes: slotted, immutable, an ``__init__`` taking the fields
by name or in order (``kw_only=True`` as a class keyword: by name only), equality and hashing by
value (``eq=False``: by identity), a ``__post_init__`` called last (a field derived from
others sets itself with ``object.__setattr__``), a ``ClassName(a=1, b='x')`` repr, pickling, :func:`evolve`,
:func:`fields`, :func:`asdict`, :func:`astuple`.

Why not attrs itself: attrs writes and compiles the source of each class's methods when the
class is made, about 0.5 ms a class in every process, and a cached ``pybk build`` makes ~140
classes before it does anything. A model class costs what a plain class costs; its methods are
shared code that reads the field table the metaclass builds.

attrs compatibility: ``attrs.has``, ``attrs.fields``, ``attrs.evolve``, ``attrs.asdict`` and
cattrs work on model classes too. ``__attrs_attrs__`` is computed the first time something asks
(importing attrs then): the fields of an attrs class made with :func:`attrs.make_class` from the
same declarations. Third-party plugins may keep using attrs for their own classes and the attrs
API on pybk's.
"""

from __future__ import annotations

import contextlib
import sys
import typing
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, ClassVar

__all__ = [
    "NOTHING",
    "Factory",
    "Field",
    "FrozenError",
    "Model",
    "asdict",
    "astuple",
    "evolve",
    "field",
    "fields",
    "fields_dict",
    "has",
    "is_nothing",
    "resolve_types",
]

_set = object.__setattr__


class _Nothing:
    """No default: the field must be given."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOTHING"

    def __reduce__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()


def is_nothing(value: Any) -> bool:
    """``value`` is the "no default" marker of a model field or of an attrs field."""
    if value is NOTHING:
        return True
    attr = sys.modules.get("attr")
    return attr is not None and value is attr.NOTHING


class Factory:
    """A default made per instance by calling ``factory()`` (as ``attrs.Factory``)."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def __repr__(self) -> str:
        return f"Factory({self.factory!r})"


class FrozenError(AttributeError):
    """A model object's fields cannot be set or deleted (``attrs.exceptions.FrozenInstanceError``)."""

    msg = "can't set attribute"


class Field:
    """One field: what :func:`field` declares, then named by the class it belongs to.

    The attributes are those of ``attrs.Attribute`` that pybk reads: ``name``, ``alias`` (the
    ``__init__`` parameter: the name), ``default`` (:data:`NOTHING`, a value or a
    :class:`Factory`), ``type`` (the annotation; a type after :func:`resolve_types`),
    ``converter``, ``metadata``, ``eq``, ``repr``, ``kw_only``, ``init`` (always true)."""

    __slots__ = ("name", "alias", "default", "type", "converter", "metadata", "eq", "hash",
                 "repr", "kw_only", "init", "validator")

    def __init__(self, default: Any = NOTHING, *, converter: Callable[[Any], Any] | None = None,
                 metadata: Mapping[str, Any] | None = None, eq: bool = True,
                 hash: bool | None = None, repr: bool = True, kw_only: bool = False,
                 name: str = "", type: Any = None) -> None:
        self.name = self.alias = name
        self.default = default
        self.type = type
        self.converter = converter
        self.metadata: Mapping[str, Any] = metadata or {}
        self.eq = eq
        self.hash = eq if hash is None else hash
        self.repr = repr
        self.kw_only = kw_only
        self.init = True
        self.validator = None

    def named(self, name: str, annotation: Any, kw_only: bool) -> Field:
        return Field(self.default, converter=self.converter, metadata=self.metadata, eq=self.eq,
                     hash=self.hash, repr=self.repr, kw_only=self.kw_only or kw_only, name=name, type=annotation)

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, type={self.type!r})"


def field(*, default: Any = NOTHING, factory: Callable[[], Any] | None = None,
          converter: Callable[[Any], Any] | None = None,
          metadata: Mapping[str, Any] | None = None, eq: bool = True,
          hash: bool | None = None, repr: bool = True, kw_only: bool = False) -> Any:
    """A field with more than a default (as ``attrs.field``): ``factory`` makes the default per
    instance; ``converter`` is applied to every value, defaults included; ``eq=False`` leaves
    the field out of equality and hashing, ``hash=False`` out of hashing only, ``repr=False``
    out of the repr."""
    if factory is not None:
        if default is not NOTHING:
            raise TypeError("field() takes a default or a factory, not both")
        default = Factory(factory)
    return Field(default, converter=converter, metadata=metadata, eq=eq, hash=hash, repr=repr,
                 kw_only=kw_only)


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar", "t.ClassVar"))
    return getattr(annotation, "__origin__", None) is ClassVar


class _ModelMeta(type):
    """Builds the field table and the slots of each model class."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any], *,
                kw_only: bool = False, eq: bool | None = None, frozen: bool | None = None,
                repr: bool | None = None) -> Any:
        if "__attrs_attrs__" in ns:  # attrs remaking a subclass of a model class: attrs's own class
            return super().__new__(mcls, name, bases, ns)
        inherited: dict[str, Field] = {}
        for base in reversed(bases):
            for f in getattr(base, "__model_fields__", ()):
                inherited[f.name] = f
        own: list[Field] = []
        for fname, annotation in ns.get("__annotations__", {}).items():
            if _is_classvar(annotation):
                continue
            value = ns.pop(fname, NOTHING)
            declared = value if isinstance(value, Field) else Field(value)
            own.append(declared.named(fname, annotation, kw_only))
            inherited.pop(fname, None)
        ns["__slots__"] = (*ns.get("__slots__", ()), *(f.name for f in own if not any(
            f.name in getattr(b, "__model_fields_by_name__", ()) for b in bases)))
        cls = super().__new__(mcls, name, bases, ns)
        all_fields = (*inherited.values(), *own)
        cls.__model_fields__ = all_fields
        cls.__model_fields_by_name__ = {f.name: f for f in all_fields}
        cls.__model_positional__ = tuple(f.name for f in all_fields if not f.kw_only)
        cls.__model_init__ = tuple(
            (f.name, f.default.factory if isinstance(f.default, Factory) else None,
             f.default, f.converter) for f in all_fields)
        cls.__model_key__ = staticmethod(_key([f.name for f in all_fields if f.eq]))
        cls.__model_hash_key__ = staticmethod(_key([f.name for f in all_fields if f.hash]))
        cls.__model_repr__ = tuple(f.name for f in all_fields if f.repr)
        cls.__match_args__ = cls.__model_positional__
        cls.__model_post_init__ = getattr(cls, "__post_init__", None)
        if eq is False and "__eq__" not in ns:
            cls.__eq__ = object.__eq__  # type: ignore[method-assign]
            cls.__ne__ = object.__ne__  # type: ignore[method-assign]
            cls.__hash__ = object.__hash__  # type: ignore[method-assign]
        if frozen is False:
            cls.__setattr__ = object.__setattr__  # type: ignore[method-assign]
            cls.__delattr__ = object.__delattr__  # type: ignore[method-assign]
            if "__hash__" not in ns and eq is not False:
                cls.__hash__ = None  # type: ignore[assignment]
        if repr is False and "__repr__" not in ns:
            cls.__repr__ = object.__repr__  # type: ignore[method-assign]
        return cls

    @property
    def __attrs_attrs__(cls) -> Any:
        """The fields as ``attrs.Attribute`` objects (attrs imported on first use)."""
        shadow = cls.__dict__.get("__model_attrs_shadow__")
        if shadow is None:
            shadow = _attrs_shadow(cls)
            type.__setattr__(cls, "__model_attrs_shadow__", shadow)
        return shadow


def _key(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The values that equality and hashing compare, as one tuple."""
    if not names:
        return lambda _: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names)


def _attrs_shadow(cls: type) -> Any:
    import attrs

    with contextlib.suppress(NameError):  # names only imported for type checkers stay strings
        resolve_types(cls)
    specs = {}
    for f in cls.__model_fields__:  # type: ignore[attr-defined]
        default = f.default
        if isinstance(default, Factory):
            default = attrs.Factory(default.factory)
        elif default is NOTHING:
            default = attrs.NOTHING
        specs[f.name] = attrs.field(default=default, converter=f.converter, eq=f.eq,
                                    hash=f.hash, repr=f.repr, metadata=dict(f.metadata), kw_only=f.kw_only,
                                    type=f.type)
    made = attrs.make_class(cls.__name__, specs, slots=False, frozen=True, eq=False, init=True,
                            repr=False)
    return made.__attrs_attrs__


class Model(metaclass=_ModelMeta):
    """The base of model classes (see the module's description)."""

    __slots__ = ("__weakref__",)
    # The field table (set by the metaclass for every class; not annotated, so that
    # typing.get_type_hints of a model class lists its fields only):
    # __model_fields__, __model_fields_by_name__, __model_positional__ (the names __init__
    # takes in order), __model_init__ ((name, factory, default, converter) per field),
    # __model_post_init__ (the class's __post_init__, called at the end of __init__),
    # __model_key__ (the values equality compares), __model_hash_key__ (those hashing does),
    # __model_repr__.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if args:
            positional = cls.__model_positional__
            if len(args) > len(positional):
                raise TypeError(f"{cls.__name__}() takes {len(positional)} positional "
                                f"arguments but {len(args)} were given")
            for name, value in zip(positional, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"{cls.__name__}() got multiple values for argument "
                                    f"{name!r}")
                kwargs[name] = value
        for name, factory, default, converter in cls.__model_init__:
            if name in kwargs:
                value = kwargs.pop(name)
            elif factory is not None:
                value = factory()
            elif default is NOTHING:
                raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
            else:
                value = default
            _set(self, name, value if converter is None else converter(value))
        if kwargs:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument "
                            f"{next(iter(kwargs))!r}")
        if cls.__model_post_init__ is not None:
            cls.__model_post_init__(self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(f"cannot set {type(self).__name__}.{name}: model objects are immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete {type(self).__name__}.{name}: model objects are immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__model_key__(self) == self.__model_key__(other)  # type: ignore[no-any-return]

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((self.__class__, self.__model_hash_key__(self)))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__model_repr__)
        return f"{type(self).__qualname__}({shown})"

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.__model_fields__}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        for name, value in state.items():
            _set(self, name, value)


def _attrs_class(cls: Any) -> bool:
    """``cls`` is a class made by attrs (a third-party plugin's options, say)."""
    return (isinstance(cls, type) and not isinstance(cls, _ModelMeta)
            and getattr(cls, "__attrs_attrs__", None) is not None)


def has(cls: Any) -> bool:
    """``cls`` is a model class, or a class made by attrs (both have fields)."""
    return isinstance(cls, type) and (
        (isinstance(cls, _ModelMeta) and "__attrs_attrs__" not in cls.__dict__)
        or _attrs_class(cls))


def fields(cls: type) -> tuple[Any, ...]:
    """The fields of model class ``cls``, in ``__init__`` order (inherited first); of an attrs
    class, its ``attrs.fields``."""
    if isinstance(cls, _ModelMeta) and "__attrs_attrs__" not in cls.__dict__:
        return cls.__model_fields__  # type: ignore[attr-defined, no-any-return]
    if _attrs_class(cls):
        return cls.__attrs_attrs__  # type: ignore[attr-defined, no-any-return]
    raise TypeError(f"{cls!r} is not a model class")


def fields_dict(cls: type) -> dict[str, Any]:
    """The fields of model class ``cls`` by name."""
    return {f.name: f for f in fields(cls)}


def resolve_types(cls: type) -> type:
    """Replace the fields' annotations (strings under postponed evaluation) with the types they
    name, as ``attrs.resolve_types`` does. Returns ``cls``."""
    if _attrs_class(cls):
        import attrs

        return attrs.resolve_types(cls)
    if not cls.__dict__.get("__model_types_resolved__"):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in hints:
                f.type = hints[f.name]
        type.__setattr__(cls, "__model_types_resolved__", True)
    return cls


def evolve(inst: Any, **changes: Any) -> Any:
    """A copy of model object ``inst`` with ``changes`` (converters run again, as attrs does)."""
    cls = type(inst)
    if _attrs_class(cls):
        import attrs

        return attrs.evolve(inst, **changes)
    for f in fields(cls):
        if f.name not in changes:
            changes[f.name] = getattr(inst, f.name)
    return cls(**changes)


def _plain(value: Any, as_tuple: bool) -> Any:
    if isinstance(value, Model):
        return astuple(value) if as_tuple else asdict(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        kind = type(value) if type(value) in (list, tuple, set, frozenset) else list
        return kind(_plain(v, as_tuple) for v in value)
    if isinstance(value, dict):
        return {_plain(k, as_tuple): _plain(v, as_tuple) for k, v in value.items()}
    return value


def asdict(inst: Any) -> dict[str, Any]:
    """``{field: value}``, model objects inside turned into dicts, mappings into dicts (as
    ``attrs.asdict`` does)."""
    return {f.name: _plain(getattr(inst, f.name), False) for f in fields(type(inst))}


def astuple(inst: Any) -> tuple[Any, ...]:
    """The field values in order, model objects inside turned into tuples (as ``attrs.astuple``
    does)."""
    return tuple(_plain(getattr(inst, f.name), True) for f in fields(type(inst)))
