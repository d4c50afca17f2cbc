"""The definition cache: a rebuild with unchanged inputs skips the frontend, and any change to
what the frontend read or was given (Dockerfile, .dockerignore, build args, named-context
digests) is never answered from a stale entry. Also the fast entry-point scan."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pybk.core.engine import defcache
from pybk.core.engine.build import LocalBridge, solve_frontend
from pybk.core.errors import UsageError
from pybk.frontends.dockerfile.frontend import DockerfileFrontend

BASE_CONFIG = {"architecture": "amd64", "os": "linux",
               "config": {"Env": ["PATH=/bin"], "WorkingDir": "/"},
               "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}}


class FakeBridge(LocalBridge):
    """A LocalBridge whose image configs come from a table (no registry, no layout)."""

    def __init__(self, context: Path, configs: dict[str, dict] | None = None):
        super().__init__(local_dirs={"context": str(context), "dockerfile": str(context)},
                         oci_layouts={"base": str(context / "layout")}, config=None)
        self.configs = configs or {}
        self.digests: dict[str, str] = {}
        self.resolved: list[str] = []

    def resolve_image_config(self, ref, platform=None):
        self.resolved.append(ref)
        return self.digests.get(ref, "sha256:" + "2" * 64), self.configs.get(ref, BASE_CONFIG)


@pytest.fixture
def counting(monkeypatch):
    """Counts real frontend runs."""
    calls = []
    original = DockerfileFrontend.solve

    def solve(self, request, bridge):
        calls.append(dict(request.opts))
        return original(self, request, bridge)

    monkeypatch.setattr(DockerfileFrontend, "solve", solve)
    return calls


def _solve(tmp_path: Path, opts: dict[str, str], bridge: FakeBridge | None = None):
    bridge = bridge or FakeBridge(tmp_path / "ctx")
    result = solve_frontend("dockerfile.v0", DockerfileFrontend, dict(opts), bridge,
                            str(tmp_path / "store"))
    return result, bridge


def _context(tmp_path: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DOCKERFILE = "ARG BASE=base\nFROM ${BASE}\nARG V=1\nRUN echo $V\nCOPY . /app\n"


def _opts(**extra: str) -> dict[str, str]:
    return {"filename": "Dockerfile", "build-arg:BASE": "base",
            "context:base": f"oci-layout://base@{DIGEST_A}", **extra}


def test_rebuild_is_answered_from_the_cache_with_the_same_result(tmp_path, counting):
    _context(tmp_path, DOCKERFILE + "COPY missing-unused /x\nFROM base AS unused\n")
    first, bridge1 = _solve(tmp_path, _opts(**{"build-arg:UNUSED": "1"}))
    second, bridge2 = _solve(tmp_path, _opts(**{"build-arg:UNUSED": "1"}))
    assert len(counting) == 1
    assert second.definition.to_bytes() == first.definition.to_bytes()
    assert second.definition == first.definition
    assert second.image_config == json.loads(json.dumps(first.image_config))
    # the frontend's warnings are given again on a hit
    assert bridge1.warnings and bridge2.warnings == bridge1.warnings
    assert any("UNUSED" in w for w in bridge2.warnings)
    assert len(list((tmp_path / "store" / "defcache").iterdir())) == 1


def test_changed_dockerfile_is_never_stale(tmp_path, counting):
    ctx = _context(tmp_path, DOCKERFILE)
    first, _ = _solve(tmp_path, _opts())
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("echo $V", "echo changed $V"))
    second, _ = _solve(tmp_path, _opts())
    assert len(counting) == 2
    assert b"echo changed" in second.definition.to_bytes()
    assert b"echo changed" not in first.definition.to_bytes()
    # and back: the entry now holds the second Dockerfile, so the first is run again
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    third, _ = _solve(tmp_path, _opts())
    assert len(counting) == 3 and third.definition == first.definition


def test_changed_build_arg_and_named_context_digest_miss(tmp_path, counting):
    _context(tmp_path, DOCKERFILE)
    base, _ = _solve(tmp_path, _opts())
    other_arg, _ = _solve(tmp_path, _opts(**{"build-arg:V": "2"}))
    other_digest, _ = _solve(tmp_path, _opts(**{"context:base": f"oci-layout://base@{DIGEST_B}"}))
    assert len(counting) == 3
    assert other_arg.definition != base.definition
    assert DIGEST_B.encode() in other_digest.definition.to_bytes()
    assert DIGEST_B.encode() not in base.definition.to_bytes()
    # each of them is now a hit
    _solve(tmp_path, _opts(**{"build-arg:V": "2"}))
    _solve(tmp_path, _opts())
    assert len(counting) == 3


def test_dockerignore_added_changed_and_removed(tmp_path, counting):
    ctx = _context(tmp_path, DOCKERFILE)
    none, _ = _solve(tmp_path, _opts())
    (ctx / ".dockerignore").write_text("secret.txt\n")
    ignored, _ = _solve(tmp_path, _opts())
    assert b"secret.txt" in ignored.definition.to_bytes()
    (ctx / ".dockerignore").write_text("other.txt\n")
    changed, _ = _solve(tmp_path, _opts())
    assert b"other.txt" in changed.definition.to_bytes()
    assert b"secret.txt" not in changed.definition.to_bytes()
    (ctx / ".dockerignore").unlink()
    removed, _ = _solve(tmp_path, _opts())
    assert removed.definition == none.definition
    # a Dockerfile-specific ignore file appearing is noticed too
    (ctx / "Dockerfile.dockerignore").write_text("specific.txt\n")
    specific, _ = _solve(tmp_path, _opts())
    assert b"specific.txt" in specific.definition.to_bytes()
    assert len(counting) == 5


def test_context_file_change_reuses_the_definition(tmp_path, counting):
    """The definition names the context, not its content: the solver checksums the files."""
    ctx = _context(tmp_path, DOCKERFILE)
    (ctx / "app.txt").write_text("one")
    first, _ = _solve(tmp_path, _opts())
    (ctx / "app.txt").write_text("two")
    second, _ = _solve(tmp_path, _opts())
    assert len(counting) == 1 and second.definition == first.definition


def test_tags_are_cached_while_they_resolve_to_the_same_digest(tmp_path, counting):
    ref = "alpine:3.19"  # as the frontend asks the bridge
    _context(tmp_path, "FROM alpine:3.19\nRUN true\n")
    first, bridge = _solve(tmp_path, {"filename": "Dockerfile"})
    assert bridge.resolved == [ref] and len(counting) == 1
    # the rebuild re-resolves the tag (as BuildKit does) and reuses the entry
    second, bridge = _solve(tmp_path, {"filename": "Dockerfile"})
    assert bridge.resolved == [ref] and len(counting) == 1
    assert second.definition == first.definition
    # the tag moved (to an image with another config): the frontend runs again
    moved = FakeBridge(tmp_path / "ctx", {ref: {**BASE_CONFIG, "config": {"Env": ["A=moved"]}}})
    moved.digests[ref] = DIGEST_B
    third, _ = _solve(tmp_path, {"filename": "Dockerfile"}, moved)
    assert len(counting) == 2 and third.image_config != first.image_config
    assert "A=moved" in third.image_config["config"]["Env"]
    # a tag that no longer resolves is a miss: the frontend reports the error itself
    class Gone(FakeBridge):
        def resolve_image_config(self, ref, platform=None):
            self.resolved.append(ref)
            raise UsageError(f"{ref}: not found")

    with pytest.raises(Exception, match="failed to resolve source metadata for alpine:3.19"):
        _solve(tmp_path, {"filename": "Dockerfile"}, Gone(tmp_path / "ctx"))
    assert len(counting) == 3


def test_digest_pinned_images_are_cached(tmp_path, counting):
    _context(tmp_path, f"FROM alpine@{DIGEST_A}\nRUN true\n")
    _solve(tmp_path, {"filename": "Dockerfile"})
    _, bridge = _solve(tmp_path, {"filename": "Dockerfile"})
    assert len(counting) == 1 and bridge.resolved == []


def test_errors_are_not_cached(tmp_path, counting):
    _context(tmp_path, "# check=error=true\nFROM base as lower\nRUN true\n")
    opts = {"filename": "Dockerfile", "context:base": f"oci-layout://base@{DIGEST_A}"}
    for _ in range(2):
        with pytest.raises(Exception, match="FromAsCasing"):
            _solve(tmp_path, opts)
    assert len(counting) == 2


def test_corrupt_or_foreign_entries_are_misses(tmp_path, counting):
    _context(tmp_path, DOCKERFILE)
    first, _ = _solve(tmp_path, _opts())
    [entry] = (tmp_path / "store" / "defcache").iterdir()
    entry.write_bytes(b"{not json")
    again, _ = _solve(tmp_path, _opts())
    assert again.definition == first.definition and len(counting) == 2
    data = json.loads(entry.read_text())
    data["definition"] = "garbage"
    entry.write_text(json.dumps(data))
    third, _ = _solve(tmp_path, _opts())
    assert third.definition == first.definition and len(counting) == 3


def test_frontends_must_opt_in(tmp_path):
    class Plain(DockerfileFrontend):
        definition_cache = False

    _context(tmp_path, DOCKERFILE)
    solve_frontend("x", Plain, _opts(), FakeBridge(tmp_path / "ctx"), str(tmp_path / "store"))
    assert not (tmp_path / "store" / "defcache").exists()


def test_recording_bridge_marks_nested_solves_and_partial_reads(tmp_path):
    ctx = _context(tmp_path, DOCKERFILE)
    rec = defcache.RecordingBridge(FakeBridge(ctx))
    rec.read_file("context", "Dockerfile")
    assert rec.cacheable and rec.files[0][2] is not None
    rec.read_file("context", "Dockerfile", length=3)
    assert not rec.cacheable
    rec = defcache.RecordingBridge(FakeBridge(ctx))
    with pytest.raises(UsageError, match="no engine"):
        rec.solve(object())
    assert not rec.cacheable


def test_entries_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(defcache, "_MAX_ENTRIES", 4)
    monkeypatch.setattr(defcache, "_KEEP_AFTER_TRIM", 2)
    _context(tmp_path, DOCKERFILE)
    for i in range(6):
        _solve(tmp_path, _opts(**{"build-arg:V": str(i)}))
    assert len(list((tmp_path / "store" / "defcache").iterdir())) <= 4


def test_code_change_changes_the_key(tmp_path, monkeypatch):
    opts = _opts()
    key = defcache.cache_key("dockerfile.v0", DockerfileFrontend, opts, {}, {})
    assert key == defcache.cache_key("dockerfile.v0", DockerfileFrontend, opts, {}, {})
    monkeypatch.setattr("pybk.core.__version__", "99.0")
    assert key != defcache.cache_key("dockerfile.v0", DockerfileFrontend, opts, {}, {})


# -- entry points ----------------------------------------------------------------------------


def test_entry_point_scan_matches_importlib(tmp_path, monkeypatch):
    from importlib.metadata import entry_points

    from pybk.core.plugins import find_entry_points

    for dist, version, eps in (("Pybk_Toy.Thing", "1.2", "[pybk]\ntoy = toy_mod\n"),
                               ("other", "0.1", "[console_scripts]\nx = y:z\n"),
                               ("pybk_toy_thing", "9.9", "[pybk]\nshadowed = nope\n")):
        info = tmp_path / ("first" if version != "9.9" else "second") / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(eps)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "first"), str(tmp_path / "second"),
                                      *sys.path])
    ours = find_entry_points("pybk")
    theirs = list(entry_points(group="pybk"))
    assert [(e.name, e.value, e.dist.name, e.dist.version) for e in ours] == \
        [(e.name, e.value, e.dist.name, e.dist.version) for e in theirs]
    assert [e.name for e in ours if e.dist.version == "1.2"] == ["toy"]
    assert all(e.name != "shadowed" for e in ours)
    assert os.path.isdir(tmp_path / "first")


def test_whole_tree_selectors_share_the_local_checksum(tmp_path):
    """A COPY of a whole synced context reuses the source's checksum: every selector spelling
    counted as whole-tree must give exactly that checksum."""
    from pybk.core.fs.contenthash import ChecksumCache
    from pybk.core.solver.cachekey import Selector
    from pybk.core.solver.ops import _whole_tree

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "top").write_text("y")
    sums = ChecksumCache(None)
    whole = sums.checksum(str(tmp_path), "/")
    for path in ("/", "", ".", "/."):
        for wildcard in (False, True):
            for follow in (False, True):
                assert _whole_tree(Selector(path, wildcard, follow))
                assert sums.checksum(str(tmp_path), path, wildcard=wildcard,
                                     follow_symlinks=follow) == whole
    assert not _whole_tree(Selector("/d"))
    assert not _whole_tree(Selector("/", exclude_patterns=("top",)))
