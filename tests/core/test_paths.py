"""Default store, configuration file and daemon socket of root and of an ordinary user
(:mod:`pybk.core.paths`), also inside a user namespace where the process is uid 0 but
``$PYBK_REAL_UID`` names the user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support.testuser import TestUser, missing_tools

from pybk.core.errors import UsageError
from pybk.core.paths import default_config, default_root, real_uid, store_socket

_SHOW = ("import json; from pybk.core import paths as p; "
         "print(json.dumps({'root': p.default_root(), 'config': p.default_config(), "
         "'socket': p.store_socket(p.default_root()), 'runtime': p.runtime_dir()}))")


def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        reason = "needs root (to make a user)"
    elif missing_tools():
        reason = (f"{', '.join(missing_tools())} not found (scripts/setup.sh installs acl; "
                  "useradd: passwd, setpriv: util-linux)")
    else:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def user() -> Iterator[TestUser]:
    _needs_root_and_tools()
    with TestUser(subids=False) as made:
        yield made


def _show(user: TestUser, **env: str) -> dict[str, str | None]:
    done = user.run([sys.executable, "-c", _SHOW], env=user.env(**env))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_an_ordinary_users_paths_follow_xdg(user):
    home = user.home
    assert _show(user) == {"root": f"{home}/.local/share/pybk", "config": None,
                           "socket": f"{home}/.local/share/pybk/pybkd.sock", "runtime": None}
    os.makedirs(f"{home}/.config/pybk")
    with open(f"{home}/.config/pybk/buildkitd.toml", "w") as f:
        f.write('[worker.oci]\nnetworkMode = "none"\n')
    os.makedirs(f"{home}/run", mode=0o700)
    shown = _show(user, XDG_RUNTIME_DIR=f"{home}/run")
    assert shown == {"root": f"{home}/.local/share/pybk",
                     "config": f"{home}/.config/pybk/buildkitd.toml",
                     "socket": f"{home}/run/pybk/pybkd.sock", "runtime": f"{home}/run"}
    shown = _show(user, XDG_DATA_HOME=f"{home}/data", XDG_CONFIG_HOME=f"{home}/conf",
                  XDG_RUNTIME_DIR=f"{home}/run")
    assert shown == {"root": f"{home}/data/pybk", "config": None,  # no file there
                     "socket": f"{home}/run/pybk/pybkd.sock", "runtime": f"{home}/run"}
    # relative XDG values are ignored (the XDG rule); an empty $PYBK_CONFIG means no file
    assert _show(user, XDG_CONFIG_HOME="conf", XDG_DATA_HOME="data")["root"] == \
        f"{home}/.local/share/pybk"
    assert _show(user, PYBK_CONFIG="")["config"] is None
    # another store of the user's keeps its socket inside it
    done = user.run([sys.executable, "-c", "from pybk.core.paths import store_socket; "
                     f"print(store_socket('{home}/other'))"],
                    env=user.env(XDG_RUNTIME_DIR=f"{home}/run"))
    assert done.stdout == f"{home}/other/pybkd.sock\n"


def test_without_xdg_runtime_dir_run_user_uid_when_it_is_the_users(user):
    run_user = f"/run/user/{user.uid}"
    if os.path.exists(run_user):
        pytest.skip(f"{run_user} exists already")
    os.makedirs(run_user, mode=0o700)
    try:
        assert _show(user)["socket"] == f"{user.home}/.local/share/pybk/pybkd.sock"  # root's
        os.chown(run_user, user.uid, user.gid)
        assert _show(user)["socket"] == f"{run_user}/pybk/pybkd.sock"
    finally:
        shutil.rmtree(run_user)


def test_the_cli_reads_the_users_config_file(user):
    os.makedirs(f"{user.home}/.config/pybk")
    with open(f"{user.home}/.config/pybk/buildkitd.toml", "w") as f:
        f.write('[worker.oci]\nnetworkMode = "none"\n')
    done = user.run([sys.executable, "-m", "pybk.core.cli.commands", "debug", "config"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["worker"]["oci"]["networkMode"] == "none"


def test_inside_a_user_namespace_the_real_uid_decides(tmp_path):
    """uid 0 in a user namespace, ``$PYBK_REAL_UID`` the user's: the user's paths."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root and unshare (util-linux)")
        pytest.skip("needs root and unshare (util-linux)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYBK_ROOT", "PYBK_CONFIG") and not k.startswith("XDG_")}
    env.update(PYBK_REAL_UID="54321", HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path / "r"))
    done = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c",
                           "import os; assert os.geteuid() == 0; " + _SHOW],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "root": f"{tmp_path}/.local/share/pybk", "config": None,
        "socket": f"{tmp_path}/r/pybk/pybkd.sock", "runtime": f"{tmp_path}/r"}


def test_real_uid(monkeypatch, tmp_path):
    monkeypatch.delenv("PYBK_ROOT", raising=False)
    monkeypatch.setenv("PYBK_REAL_UID", "0")
    assert real_uid() == 0 and default_root() == "/var/lib/pybk"
    assert store_socket(default_root()) == "/run/pybk/pybkd.sock"
    monkeypatch.delenv("PYBK_CONFIG", raising=False)
    assert default_config() is None  # root has no default file
    monkeypatch.setenv("PYBK_REAL_UID", "1000")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert real_uid() == 1000 and default_root() == f"{tmp_path}/pybk"
    monkeypatch.setenv("PYBK_REAL_UID", "me")
    with pytest.raises(UsageError, match=r"PYBK_REAL_UID='me': expected a uid \(a number\)"):
        real_uid()
