"""Sizes and durations as BuildKit reads them (go-units RAMInBytes, Go durations)."""

import pytest

from pybk.core.units import (
    DEFAULT_DISK_CAP,
    DiskSpace,
    Seconds,
    format_duration,
    parse_duration,
    parse_size,
)

GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (512000000, 512000000),
        ("9000", 9000),
        ("512", 512),
        ("512b", 512),
        ("512B", 512),
        ("1k", 1024),
        ("1K", 1024),
        ("1kb", 1024),
        ("1KiB", 1024),
        ("512MB", 512 * MIB),  # binary, as RAMInBytes does
        ("512mb", 512 * MIB),
        ("512 MB", 512 * MIB),
        ("1GB", GIB),
        ("1gib", GIB),
        ("1.5g", int(1.5 * GIB)),
        ("2T", 2 << 40),
        ("1P", 1 << 50),
        ("1e3", 1000),
        (".5k", 512),
        ("", 0),
    ],
)
def test_parse_size_good(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10XB", 'unknown unit "XB"'),
        ("5x", 'unknown unit "x"'),
        ("1KiBB", 'unknown unit "KiBB"'),
        ("1bb", 'unknown unit "bb"'),
        ("1mib2", 'invalid size "1mib2"'),
        ("lots", "no number"),
        ("MB", "no number"),
        ("1 GB extra", 'invalid size "1 GB extra"'),
        ("-1", "must not be negative"),
        ("-5MB", "must not be negative"),
        (-1, "must not be negative"),
        (True, "got boolean true"),
        ([1], "got array"),
        ("12.5%", "whole number"),
        ("150%", "between 0 and 100"),
        ("abc%", "whole number"),
    ],
)
def test_parse_size_bad(value, message):
    with pytest.raises(ValueError) as info:
        parse_size(value, disk_total=100 * GIB)
    assert message in str(info.value)


def test_percentages_round_up_to_decimal_gigabytes():
    # BuildKit: (total * pct / 100 / 2^30 + 1) * 1e9
    assert parse_size("10%", disk_total=100 * GIB) == 11 * 10**9
    assert parse_size("50%", disk_total=10 * GIB) == 6 * 10**9
    assert parse_size("1%", disk_total=GIB) == 1 * 10**9
    assert parse_size("0%", disk_total=GIB) == 0
    assert parse_size("100%", disk_total=3 * GIB + 5) == 4 * 10**9


def test_percentage_needs_a_disk_size():
    with pytest.raises(ValueError, match="percentage of the disk"):
        parse_size("10%")


def test_disk_space_keeps_percentages_until_resolved():
    space = DiskSpace.parse("20%")
    assert space == DiskSpace(percentage=20)
    assert space.to_json() == "20%"
    assert space.as_bytes(200 * GIB) == 41 * 10**9
    # BuildKit assumes 2 GB when the disk size cannot be read
    assert space.as_bytes(None) == DEFAULT_DISK_CAP
    assert space.as_bytes(0) == DEFAULT_DISK_CAP
    assert DiskSpace.parse("1GB").to_json() == GIB
    assert DiskSpace.parse("").is_unset
    assert DiskSpace.parse(1.9) == DiskSpace(bytes=1)  # truncated like Go's int64(float)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("48h", 172800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("300ms", 0.3),
        ("2h45m30.5s", 9930.5),
        ("1us", 1e-6),
        ("1µs", 1e-6),
        ("1μs", 1e-6),
        ("10ns", 1e-8),
        ("+5m", 300),
        ("0", 0),
        ("0s", 0),
        ("", 0),
        ("172800", 172800),  # digits alone: seconds (BuildKit's fallback)
        (172800, 172800),
        (0, 0),
    ],
)
def test_parse_duration_good(value, seconds):
    result = parse_duration(value)
    assert isinstance(result, Seconds)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("60d", "no days or weeks"),
        ("2w", "no days or weeks"),
        ("48x", 'invalid duration "48x"'),
        ("h", 'invalid duration "h"'),
        ("1h-5m", 'invalid duration "1h-5m"'),
        ("1.5.h", 'invalid duration "1.5.h"'),
        ("-1h", "must not be negative"),
        ("-30", "must not be negative"),
        (-30, "must not be negative"),
        (1.5, "got float 1.5"),  # BuildKit rejects TOML floats too
        (True, "got boolean true"),
        ({"h": 1}, "got table"),
    ],
)
def test_parse_duration_bad(value, message):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (172800, "48h0m0s"),
        (5400, "1h30m0s"),
        (90, "1m30s"),
        (1.5, "1.5s"),
        (0.3, "300ms"),
        (2e-6, "2µs"),
        (1e-8, "10ns"),
        (60 * 24 * 3600, "1440h0m0s"),
    ],
)
def test_format_duration_is_go_style(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
