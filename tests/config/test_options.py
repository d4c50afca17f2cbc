"""Plugin Options from CLI CSV attrs through the one converter (structure_options)."""

from __future__ import annotations

import enum
from typing import Literal

import attrs
import pytest

from pybk.core.converter import get_converter, setting, structure_options
from pybk.core.errors import UsageError
from pybk.core.model import Model
from pybk.core.units import DiskSpace, Seconds


class CacheOptions(Model, kw_only=True):
    """Shaped like the s3 cache backend's attrs (reference §3.3)."""

    bucket: str
    region: str = ""
    name: list[str] = setting(factory=lambda: ["buildkit"], sep=";")
    upload_parallelism: int = 4
    touch_refresh: Seconds = Seconds(24 * 3600)
    use_path_style: bool = False
    mode: Literal["min", "max"] = "min"
    ignore_error: bool = setting("ignore-error", default=False)
    compression_level: int | None = setting("compression-level", default=None)


class Compression(enum.Enum):
    GZIP = "gzip"
    ZSTD = "zstd"
    UNCOMPRESSED = "uncompressed"


class ImageOptions(Model, kw_only=True):
    """Shaped like the image exporter's attrs (reference §3.2)."""

    name: list[str] = setting(factory=list)
    push: bool = False
    registry_insecure: bool = setting("registry.insecure", default=False)
    compression: Compression = Compression.GZIP
    annotations: dict[str, str] = setting(prefix="annotation.", factory=dict)
    annotations_by_kind: dict[str, str] = setting(prefix="annotation-", factory=dict)
    ratio: float = 1.0
    limit: DiskSpace = setting(factory=DiskSpace)
    labels: dict[str, str] = setting(factory=dict)


@attrs.frozen
class PlainOptions:
    """A third-party plugin's options may be an attrs class."""

    path: str
    depth: int = 1


def test_strings_become_the_field_types():
    opts = structure_options(CacheOptions, {
        "bucket": "cache", "name": "a;b", "upload_parallelism": "8", "touch_refresh": "1h30m",
        "use_path_style": "true", "mode": "max", "ignore-error": "1", "compression-level": "3",
    }, where="--cache-to")
    assert opts == CacheOptions(bucket="cache", name=["a", "b"], upload_parallelism=8,
                                touch_refresh=Seconds(5400), use_path_style=True, mode="max",
                                ignore_error=True, compression_level=3)


def test_defaults_apply_and_required_attrs_are_enough():
    assert structure_options(CacheOptions, {"bucket": "b"}, where="--cache-to") == CacheOptions(
        bucket="b")
    assert structure_options(PlainOptions, {"path": "/x"}, where="--opt") == PlainOptions("/x")


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("True", True), ("1", True), ("t", True), ("", True),
     ("false", False), ("FALSE", False), ("0", False), ("f", False)],
)
def test_booleans_follow_go_parsebool(text, value):
    opts = structure_options(ImageOptions, {"push": text}, where="--output")
    assert opts.push is value


def test_lists_enums_floats_sizes_and_dicts():
    opts = structure_options(ImageOptions, {
        "name": "r/a:1,r/b:2", "compression": "zstd", "ratio": "0.5", "limit": "2GB",
        "labels": "a=1,b=2", "registry.insecure": "true",
    }, where="--output")
    assert opts.name == ["r/a:1", "r/b:2"]
    assert opts.compression is Compression.ZSTD
    assert opts.ratio == 0.5
    assert opts.limit == DiskSpace(bytes=2 << 30)
    assert opts.labels == {"a": "1", "b": "2"}
    assert opts.registry_insecure is True


def test_prefixed_attrs_are_collected_into_their_dict():
    opts = structure_options(ImageOptions, {
        "annotation.org.opencontainers.image.title": "demo",
        "annotation.x": "1",
        "annotation-manifest[linux/amd64].y": "2",
    }, where="--output")
    assert opts.annotations == {"org.opencontainers.image.title": "demo", "x": "1"}
    assert opts.annotations_by_kind == {"manifest[linux/amd64].y": "2"}


def _error(cls: type, attrs_in: dict[str, str], where: str = "--cache-to") -> str:
    with pytest.raises(UsageError) as info:
        structure_options(cls, attrs_in, where=where)
    assert info.value.flag == where
    assert info.value.exit_code == 2
    return str(info.value)


def test_unknown_attr_suggests_the_closest():
    assert _error(CacheOptions, {"bucket": "b", "upload_paralelism": "2"}) == (
        '--cache-to: unknown attribute "upload_paralelism" (did you mean '
        '"upload_parallelism"?)')
    assert _error(CacheOptions, {"bucket": "b", "ignore_error": "true"}) == (
        '--cache-to: unknown attribute "ignore_error" (did you mean "ignore-error"?)')


def test_unknown_attr_without_a_close_match_lists_the_known_ones():
    message = _error(PlainOptions, {"path": "/x", "zzz": "1"}, where="--opt")
    assert message == '--opt: unknown attribute "zzz" (known: depth, path)'


def test_missing_required_attr():
    assert _error(CacheOptions, {"region": "eu"}) == (
        '--cache-to: missing required attribute "bucket"')


def test_every_bad_value_is_reported_at_once():
    message = _error(CacheOptions, {
        "bucket": "b", "upload_parallelism": "many", "use_path_style": "yes",
        "mode": "maximum", "touch_refresh": "1d", "compression-level": "1.5",
    })
    assert message == (
        '--cache-to: attribute "upload_parallelism": expected an integer, got "many"; '
        'attribute "use_path_style": expected true or false, got "yes"; '
        'attribute "mode": "maximum" is not one of min, max (did you mean "max"?); '
        'attribute "compression-level": expected an integer, got "1.5"; '
        'attribute "touch_refresh": invalid duration "1d" (Go durations have no days or '
        'weeks; write hours, e.g. "1440h" for 60 days)')


def test_bad_enum_value_and_bad_size():
    message = _error(ImageOptions, {"compression": "gzp", "limit": "10XB"}, where="--output")
    assert message.startswith('--output: attribute "compression": "gzp" is not one of gzip, '
                              'zstd, uncompressed (did you mean "gzip"?); attribute "limit": '
                              'invalid size "10XB"')


def test_bad_value_for_a_required_attr_is_not_also_reported_missing():
    @attrs.frozen
    class Needs:
        count: int

    assert _error(Needs, {"count": "x"}, where="--opt") == (
        '--opt: attribute "count": expected an integer, got "x"')


def test_toml_structuring_is_strict_for_options_too():
    conv = get_converter()
    assert conv.structure({"bucket": "b", "ignore-error": True}, CacheOptions).ignore_error
    with pytest.raises(Exception) as info:
        conv.structure({"bucket": "b", "upload_parallelism": "4"}, CacheOptions)
    assert "expected an integer" in repr(info.value.exceptions)


def _sample_text(field) -> str | None:
    """A text that suits ``field``'s type, or None when it has no plain type."""
    import enum
    import typing

    from pybk.core import converter as cv

    tp = cv._strip_optional(field.type)
    if tp is bool:
        return "true"
    if tp is int:
        return "3"
    if tp is float:
        return "1.5"
    if tp is str:
        return "value"
    if cv._is_literal(tp):
        return str(typing.get_args(tp)[-1])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return str(list(tp)[-1].value)
    if cv._is_list(tp):
        return "a,b"
    if cv._is_dict(tp):
        return "k=v"
    return None


def test_options_made_directly_equal_the_converters(monkeypatch):
    """The direct path of structure_options (no cattrs) gives exactly what the converter gives,
    for every built-in plugin's options: with nothing set, and with every plain field set."""
    import attrs

    from pybk.core import converter as cv
    from pybk.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    classes = []
    for registry in (pm.exporters(), pm.cache_backends(), pm.frontends()):
        for name in registry.names():
            options = getattr(registry.get(name), "Options", None)
            if options is not None and attrs.has(options):
                classes.append(options)
    assert len(classes) >= 8
    direct = []
    real = cv._construct_plain
    monkeypatch.setattr(cv, "_construct_plain",
                        lambda *a: direct.append(real(*a)) or direct[-1])
    compared = 0
    for cls in classes:
        attrs.resolve_types(cls)
        fields = [f for f in attrs.fields(cls) if not cv.field_meta(f, "prefix")]
        inputs = [{}]
        full = {cv.external_key(f): t for f in fields if (t := _sample_text(f)) is not None}
        inputs += [full] + [{k: v} for k, v in full.items()]
        for given in inputs:
            try:
                slow = _via_converter(monkeypatch, cls, given)
            except UsageError:
                continue  # not a valid combination: the converter words it
            fast = cv.structure_options(cls, given, where="-o")
            assert fast == slow, (cls, given)
            compared += 1
    assert compared >= 20
    assert sum(r is not None for r in direct) >= 15  # most were made directly


def _via_converter(monkeypatch, cls, given):
    from pybk.core import converter as cv

    with monkeypatch.context() as m:
        m.setattr(cv, "_construct_plain", lambda *a: None)
        return cv.structure_options(cls, given, where="-o")
