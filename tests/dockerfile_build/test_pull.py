"""``pybk build --pull``: every ``FROM`` image is resolved against its registry and pulled, never
taken from the local image store (the frontend option ``image-resolve-mode=pull`` on each image
source). A real Distribution registry serves the base image, whose tag moves between builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybk.core.cli.commands import main


def _dir(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _push_base(tmp_path: Path, ref: str, version: str, capsys) -> None:
    """Build ``FROM scratch`` + a ``/version`` file in a store of its own and push it as
    ``ref`` (the local image store of the builds under test never sees it)."""
    ctx = _dir(tmp_path / f"base-{version}", {
        "Dockerfile": "FROM scratch\nCOPY version /version\n", "version": f"{version}\n"})
    code = main(["--root", str(tmp_path / "pusher"), "build", "--progress", "quiet", "-o",
                 f"type=image,name={ref},push=true,store=false", str(ctx)])
    assert code == 0, capsys.readouterr().err


def _build_app(tmp_path: Path, ref: str, out: str, capsys, *flags: str) -> str:
    """Build ``FROM ref`` in the store under test; the base's ``/version`` it got."""
    ctx = _dir(tmp_path / "app", {"Dockerfile": f"FROM {ref}\nCOPY app /app\n", "app": "app\n"})
    dest = tmp_path / out
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet", "-o",
                 f"type=local,dest={dest}", *flags, str(ctx)])
    assert code == 0, capsys.readouterr().err
    assert (dest / "app").read_text() == "app\n"
    return (dest / "version").read_text().strip()


def test_pull_takes_the_moved_tag_from_the_registry(registry, tmp_path, capsys):
    ref = f"{registry.host}/pull/base:moving"
    _push_base(tmp_path, ref, "v1", capsys)
    assert _build_app(tmp_path, ref, "first", capsys) == "v1"
    _push_base(tmp_path, ref, "v2", capsys)  # the tag moves
    assert _build_app(tmp_path, ref, "pulled", capsys, "--pull") == "v2"
    # without --pull the tag is resolved again too (as BuildKit does on every build)
    assert _build_app(tmp_path, ref, "again", capsys) == "v2"


def test_pull_skips_an_image_of_that_name_in_the_local_image_store(registry, tmp_path, capsys):
    ref = f"{registry.host}/pull/shadowed:1"
    _push_base(tmp_path, ref, "registry", capsys)
    # the store under test gets an image of the same name of its own (store=true, no push)
    local = _dir(tmp_path / "local", {"Dockerfile": "FROM scratch\nCOPY version /version\n",
                                      "version": "local\n"})
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet", "-o",
                 f"type=image,name={ref}", str(local)])
    assert code == 0, capsys.readouterr().err
    assert _build_app(tmp_path, ref, "default", capsys) == "local"  # default: the local one
    assert _build_app(tmp_path, ref, "pulled", capsys, "--pull") == "registry"


def test_pull_sets_the_resolve_mode_of_every_image_source(registry, tmp_path, capsys):
    import json

    ref, other = f"{registry.host}/pull/modes:1", f"{registry.host}/pull/modes:2"
    _push_base(tmp_path, ref, "v1", capsys)
    _push_base(tmp_path, other, "v2", capsys)
    ctx = _dir(tmp_path / "two", {"Dockerfile": f"FROM {ref} AS a\nFROM scratch\n"
                                                "COPY --from=a /version /copied\n"
                                                f"COPY --from={other} /version /direct\n"})
    for flags, mode in (((), None), (("--pull",), "pull"),
                        (("--opt", "image-resolve-mode=local"), "local"),
                        (("--opt", "image-resolve-mode=default"), None)):
        code = main(["--root", str(tmp_path / "store"), "build", "--print-llb", *flags,
                     str(ctx)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        sources = [json.loads(line)["Op"]["source"] for line in captured.out.splitlines()
                   if "source" in json.loads(line)["Op"]]
        images = [s for s in sources if s["identifier"].startswith("docker-image://")]
        assert len(images) == 2, captured.out  # FROM and COPY --from=IMAGE
        assert [(s.get("attrs") or {}).get("image.resolvemode") for s in images] == \
            [mode] * len(images), flags


@pytest.mark.parametrize("value", ["always", "Pull"])
def test_a_bad_resolve_mode_exits_2(tmp_path, capsys, value):
    ctx = _dir(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY Dockerfile /\n"})
    code = main(["--root", str(tmp_path / "store"), "build", "--print-llb", "--opt",
                 f"image-resolve-mode={value}", str(ctx)])
    assert code == 2
    assert capsys.readouterr().err == (f'error: --opt: invalid image-resolve-mode "{value}" '
                                       "(one of default, pull, local)\n")


def test_an_image_only_in_the_local_image_store_builds_without_its_registry(tmp_path, capsys):
    """Without ``--pull`` the frontend reads the base's config from the local image store too
    (no registry serves this name: port 9 refuses connections); ``--pull`` asks the registry."""
    ref = "127.0.0.1:9/pull/local-only:1"
    local = _dir(tmp_path / "local", {"Dockerfile": "FROM scratch\nCOPY version /version\n"
                                                    "ENV FROM_LOCAL=yes\n",
                                      "version": "local\n"})
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet", "-o",
                 f"type=image,name={ref}", str(local)])
    assert code == 0, capsys.readouterr().err
    assert _build_app(tmp_path, ref, "default", capsys) == "local"
    assert _build_app(tmp_path, ref, "local", capsys, "--opt",
                      "image-resolve-mode=local") == "local"
    ctx = tmp_path / "app"
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet", "--pull",
                 "-o", f"type=local,dest={tmp_path / 'pulled'}", str(ctx)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"failed to resolve source metadata for {ref}" in err and "127.0.0.1:9" in err
    # local prefers the local image store; a name it lacks is asked of its registry
    (ctx / "Dockerfile").write_text("FROM 127.0.0.1:9/pull/missing:1\nCOPY app /app\n")
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet", "--opt",
                 "image-resolve-mode=local", "-o", f"type=local,dest={tmp_path / 'x'}",
                 str(ctx)])
    err = capsys.readouterr().err
    assert code == 2
    assert ("failed to resolve source metadata for 127.0.0.1:9/pull/missing:1: GET "
            "http://127.0.0.1:9/v2/pull/missing/manifests/1") in err
