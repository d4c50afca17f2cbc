"""``no-cache: true`` on a pipeline step, and the Dockerfile's ``--no-cache`` refused through the
CLI without its directive (exit 2, located, no traceback)."""

from __future__ import annotations

from support.engine import require_runc

from pybk.core.cli.commands import main

RAND = "head -c 12 /dev/urandom | od -An -tx1 > /{0}"


def _pybk(capsys, root, *args: str) -> tuple[int, str]:
    code = main(["--root", str(root), "build", "--progress", "quiet", *args])
    return code, capsys.readouterr().err


def test_yaml_step_no_cache(busybox_layout, tmp_path, capsys):
    require_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("a\n")
    (ctx / "pipeline.yaml").write_text(f"""\
version: 1
stages:
  final:
    from: busybox
    steps:
      - run: '{RAND.format("one")}'
      - run: {{command: '{RAND.format("two")}', no-cache: true}}
      - copy: {{src: a, dest: /a, no-cache: true}}
      - run: '{RAND.format("three")}'
""")
    outs = []
    for n in range(2):
        out = tmp_path / f"out{n}"
        code, err = _pybk(capsys, tmp_path / "store", "-f", str(ctx / "pipeline.yaml"),
                          "--build-context", f"busybox=oci-layout://{busybox_layout}",
                          "-o", f"type=local,dest={out}", str(ctx))
        assert code == 0, err
        outs.append([(out / f).read_text() for f in ("one", "two", "a", "three")])
    assert outs[0][0] == outs[1][0]
    assert outs[0][1] != outs[1][1]
    assert outs[0][2] == outs[1][2] == "a\n"
    assert outs[0][3] != outs[1][3]


def test_dockerfile_flag_without_directive_exits_2(tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY --no-cache a /a\n")
    code, err = _pybk(capsys, tmp_path / "store", str(tmp_path), "--print-llb")
    assert code == 2
    assert "Dockerfile:2: unknown flag: no-cache (--no-cache is a pybk extension: opt in " \
           "with the parser directive '# pybk=no-cache' at the top of the file)" in err
    assert "Traceback" not in err
    (tmp_path / "Dockerfile").write_text("# pybk=no-cache\nFROM scratch\nCOPY --no-cache a /a\n")
    (tmp_path / "a").write_text("a")
    code, err = _pybk(capsys, tmp_path / "store", str(tmp_path), "--print-llb")
    assert code == 0, err
