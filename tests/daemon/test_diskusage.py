"""``pybk du`` and ``pybk prune``: buildctl's table, laid out like Go's tabwriter."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from pybk.core.cli.commands import main
from pybk.core.cli.diskusage import format_bytes, tabwrite
from pybk.core.store.gc import UsageInfo


def test_format_bytes_like_go_units():
    assert [format_bytes(n) for n in (0, 999, 1000, 1_234_567, 5 * 10**9)] == [
        "0B", "999B", "1.00kB", "1.23MB", "5.00GB"]


def test_tabwrite_pads_with_tabs_to_multiples_of_eight():
    assert tabwrite(["Reclaimable:\t1.00kB", "Total:\t2.00kB"]) == (
        "Reclaimable:\t1.00kB\nTotal:\t\t2.00kB\n")
    # a line without cells ends the block: each block is aligned on its own
    assert tabwrite(["ID:\tx", "Usage count:\t1", "", "ID:\ty"]) == (
        "ID:\t\tx\nUsage count:\t1\n\nID:\ty\n")


def _info(record_id: str, size: int, *, in_use=False, mutable=False, shared=False):
    return UsageInfo(record_id, mutable, in_use, size, (), 1_700_000_000.5, None, 1, "desc",
                     "regular", shared)


def test_du_table_and_summary(capsys):
    from pybk.core.cli.diskusage import print_du

    rows = [_info("a" * 25, 1_500_000, mutable=True), _info("b" * 25, 2000, in_use=True,
                                                            shared=True)]
    print_du(rows, sys.stdout, verbose=False, filtered=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ID" + "\t" * 9 + "RECLAIMABLE\tSIZE\tLAST ACCESSED"
    assert out[1] == ("a" * 25 + "*").ljust(71) + "\ttrue       \t1.50MB\t"
    assert out[2] == ("b" * 25).ljust(71) + "\tfalse      \t2.00kB*\t"
    assert out[3:] == ["Shared:\t\t2.00kB", "Private:\t1.50MB", "Reclaimable:\t1.50MB",
                       "Total:\t\t1.50MB"]


@pytest.fixture
def built_store(tmp_path, busybox_layout):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nRUN echo x > /x\n")
    root = str(tmp_path / "store")
    assert main(["--root", root, "build", "--progress", "quiet", "--build-context",
                 f"busybox=oci-layout://{busybox_layout}", str(tmp_path / "ctx")]) == 0
    return root


def test_du_then_prune_all_empties_the_cache(built_store, capsys):
    capsys.readouterr()
    assert main(["--root", built_store, "du"]) == 0
    rows = capsys.readouterr().out.splitlines()
    records = [r for r in rows[1:] if not r.startswith(("Reclaimable:", "Total:"))]
    assert len(records) >= 2 and all("\ttrue" in r for r in records)
    assert main(["--root", built_store, "du", "-v"]) == 0
    verbose = capsys.readouterr().out
    assert verbose.count("\nType:\t\t") + verbose.startswith("Type:") >= 2
    assert main(["--root", built_store, "prune", "--keep-duration", "1h"]) == 0
    assert capsys.readouterr().out == "Total:\t0B\n"
    assert main(["--root", built_store, "prune", "--all"]) == 0
    pruned = capsys.readouterr().out.splitlines()
    assert pruned[0].startswith("ID\t") and pruned[-1].startswith("Total:\t")
    assert len(pruned) - 2 == len(records)
    assert main(["--root", built_store, "du"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["Reclaimable:\t0B", "Total:\t\t0B"]


def test_prune_rejects_a_bad_duration(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "prune", "--keep-duration", "2d"]) == 2
    assert "--keep-duration: invalid duration" in capsys.readouterr().err


def test_records_are_described_and_prunable_by_description(built_store, capsys):
    from pybk.core.store.store import Store

    store = Store.open(built_store)
    try:
        described = {u.description for u in store.du()}
    finally:
        store.close()
    assert "mount / from exec /bin/sh -c echo x > /x" in described
    assert any(d.startswith("pulled from oci-layout busybox@sha256:") for d in described)
    capsys.readouterr()
    assert main(["--root", built_store, "prune", "--filter", "description~=from exec"]) == 0
    store = Store.open(built_store)
    try:
        left = {u.description for u in store.du()}
    finally:
        store.close()
    assert "mount / from exec /bin/sh -c echo x > /x" not in left
    assert any(d.startswith("pulled from") for d in left)
