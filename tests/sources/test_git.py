"""fetch_git against a repository made by the test (file:// URLs, the real git CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.solver.sources import fetch_git

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
       "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, object]:
    """main: v1 (tagged v1.0) then v2; branch feature: one more commit."""
    r = tmp_path / "upstream"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "README").write_text("v1\n")
    (r / "sub" / "inner").mkdir(parents=True)
    (r / "sub" / "inner" / "f.txt").write_text("inside\n")
    (r / "run.sh").write_text("#!/bin/sh\n")
    (r / "run.sh").chmod(0o755)
    os.symlink("README", r / "link")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "one")
    git(r, "tag", "-a", "v1.0", "-m", "release")
    first = git(r, "rev-parse", "HEAD")
    (r / "README").write_text("v2\n")
    git(r, "commit", "-q", "-am", "two")
    second = git(r, "rev-parse", "HEAD")
    git(r, "checkout", "-q", "-b", "feature")
    (r / "feature.txt").write_text("f\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "three")
    feature = git(r, "rev-parse", "HEAD")
    git(r, "checkout", "-q", "main")
    return {"url": f"file://{r}", "path": r, "first": first, "second": second,
            "feature": feature}


def test_fetch_branch_tag_commit_and_head(tmp_path, repo):
    cache = tmp_path / "cache"
    head = fetch_git(repo["url"], None, tmp_path / "head", cache_dir=cache)
    assert head == repo["second"]
    assert (tmp_path / "head/README").read_text() == "v2\n"
    assert not (tmp_path / "head/.git").exists()
    assert os.readlink(tmp_path / "head/link") == "README"
    assert oct(os.lstat(tmp_path / "head/run.sh").st_mode & 0o777) == "0o755"
    assert oct(os.lstat(tmp_path / "head/README").st_mode & 0o777) == "0o644"

    assert fetch_git(repo["url"], "feature", tmp_path / "b", cache_dir=cache) == repo["feature"]
    assert (tmp_path / "b/feature.txt").exists()

    assert fetch_git(repo["url"], "v1.0", tmp_path / "t", cache_dir=cache) == repo["first"]
    assert (tmp_path / "t/README").read_text() == "v1\n"

    commit = fetch_git(repo["url"], repo["first"], tmp_path / "c", cache_dir=cache)
    assert commit == repo["first"]
    assert (tmp_path / "c/README").read_text() == "v1\n"
    assert len([n for n in os.listdir(cache) if n.endswith(".git")]) == 1  # one per URL

    # a commit that is no branch tip, into an empty cache: fetched by its sha
    assert fetch_git(repo["url"], repo["first"], tmp_path / "c2",
                     cache_dir=tmp_path / "cache2") == repo["first"]
    assert (tmp_path / "c2/README").read_text() == "v1\n"


def test_subdir_and_keep_git_dir(tmp_path, repo):
    cache = tmp_path / "cache"
    fetch_git(repo["url"], "main", tmp_path / "s", subdir="sub", cache_dir=cache)
    assert sorted(os.listdir(tmp_path / "s")) == ["inner"]
    assert (tmp_path / "s/inner/f.txt").read_text() == "inside\n"

    sha = fetch_git(repo["url"], "main", tmp_path / "k", keep_git_dir=True, cache_dir=cache)
    assert git(tmp_path / "k", "rev-parse", "HEAD") == sha == repo["second"]
    assert git(tmp_path / "k", "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(tmp_path / "k", "remote", "get-url", "origin") == repo["url"]
    assert git(tmp_path / "k", "status", "--porcelain") == ""

    with pytest.raises(BuildError, match="subdir 'nope' not found"):
        fetch_git(repo["url"], "main", tmp_path / "x", subdir="nope", cache_dir=cache)


def test_incremental_fetch_sees_new_commits(tmp_path, repo):
    cache = tmp_path / "cache"
    assert fetch_git(repo["url"], "main", tmp_path / "one", cache_dir=cache) == repo["second"]
    r = repo["path"]
    (r / "README").write_text("v3\n")
    git(r, "commit", "-q", "-am", "four")
    third = git(r, "rev-parse", "HEAD")
    assert fetch_git(repo["url"], "main", tmp_path / "two", cache_dir=cache) == third
    assert (tmp_path / "two/README").read_text() == "v3\n"
    # a commit already in the cache needs no upstream at all
    shutil.rmtree(r)
    assert fetch_git(repo["url"], repo["second"], tmp_path / "three", cache_dir=cache) == \
        repo["second"]


def test_errors(tmp_path, repo):
    with pytest.raises(BuildError, match=r"failed to fetch no-such-branch from file://"):
        fetch_git(repo["url"], "no-such-branch", tmp_path / "x", cache_dir=tmp_path / "cache")
    with pytest.raises(BuildError, match="failed to fetch"):
        fetch_git(f"file://{tmp_path}/missing", "main", tmp_path / "y",
                  cache_dir=tmp_path / "cache")


def test_checksum_matches_a_prefix_of_the_fetched_commit(tmp_path, repo):
    cache = tmp_path / "cache"
    second = repo["second"]
    assert fetch_git(repo["url"], "main", tmp_path / "full", checksum=second,
                     cache_dir=cache) == second
    assert fetch_git(repo["url"], "main", tmp_path / "prefix", checksum=second[:10].upper(),
                     cache_dir=cache) == second
    assert (tmp_path / "prefix/README").read_text() == "v2\n"
    # a commit given as the ref is checked too, also when it is already cached
    assert fetch_git(repo["url"], second, tmp_path / "sha", checksum=second[:7],
                     cache_dir=cache) == second


def test_checksum_of_an_annotated_tag_may_name_the_tag_object_or_its_commit(tmp_path, repo):
    cache = tmp_path / "cache"
    tag_object = git(repo["path"], "rev-parse", "v1.0")
    assert tag_object != repo["first"]
    for i, checksum in enumerate((tag_object, repo["first"][:12])):
        assert fetch_git(repo["url"], "v1.0", tmp_path / f"t{i}", checksum=checksum,
                         cache_dir=cache) == repo["first"]
    wrong = repo["second"][:12]
    with pytest.raises(BuildError) as e:
        fetch_git(repo["url"], "v1.0", tmp_path / "bad", checksum=wrong, cache_dir=cache)
    assert str(e.value) == (f"expected checksum to match {wrong}, got {tag_object} or "
                            f"{repo['first']}")


def test_checksum_mismatch_and_invalid_checksum_fail(tmp_path, repo):
    cache = tmp_path / "cache"
    first, second = repo["first"], repo["second"]
    with pytest.raises(BuildError) as e:
        fetch_git(repo["url"], "main", tmp_path / "a", checksum=first, cache_dir=cache)
    assert str(e.value) == f"expected checksum to match {first}, got {second}"
    assert not (tmp_path / "a").exists() or not os.listdir(tmp_path / "a")
    with pytest.raises(BuildError, match=f"expected checksum to match {first[:8]}, got {second}"):
        fetch_git(repo["url"], second, tmp_path / "b", checksum=first[:8], cache_dir=cache)
    with pytest.raises(BuildError, match="invalid checksum foobar for Git URL, expected hex "
                                         "commit hash"):
        fetch_git(repo["url"], "main", tmp_path / "c", checksum="foobar", cache_dir=cache)


def test_a_lock_file_left_by_a_killed_fetch_is_removed(tmp_path, repo):
    cache = tmp_path / "cache"
    fetch_git(repo["url"], "main", tmp_path / "a", cache_dir=cache)
    (bare,) = cache.glob("*.git")
    (bare / "shallow.lock").write_text("")
    assert fetch_git(repo["url"], "feature", tmp_path / "b", cache_dir=cache) == repo["feature"]
    assert not (bare / "shallow.lock").exists()


def test_concurrent_fetches_of_one_repository_share_the_cache_safely(tmp_path, repo):
    """Threads and processes fetching different refs of one URL at once into one cache."""
    import concurrent.futures
    import multiprocessing

    r = repo["path"]
    refs = {}
    for i in range(4):
        git(r, "checkout", "-q", "-b", f"b{i}", "main")
        (r / "branch.txt").write_text(f"{i}\n")
        git(r, "add", "-A")
        git(r, "commit", "-q", "-m", f"b{i}")
        refs[f"b{i}"] = git(r, "rev-parse", "HEAD")
    refs["feature"], refs["v1.0"] = repo["feature"], repo["first"]
    cache = str(tmp_path / "cache")
    jobs = [(ref, str(tmp_path / f"out-{n}-{ref}")) for n in range(4) for ref in refs]
    ctx = multiprocessing.get_context("forkserver")
    with concurrent.futures.ThreadPoolExecutor(6) as threads, \
            concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as procs:
        futures = {}
        for i, (ref, dest) in enumerate(jobs):
            pool = procs if i % 3 == 0 else threads
            futures[pool.submit(fetch_git, repo["url"], ref, dest, cache_dir=cache)] = (ref, dest)
        for future in concurrent.futures.as_completed(futures):
            ref, dest = futures[future]
            assert future.result() == refs[ref]
            expected = f"{ref[1:]}\n" if ref.startswith("b") else None
            if expected is not None:
                assert Path(dest, "branch.txt").read_text() == expected
            else:
                assert not Path(dest, "branch.txt").exists()
