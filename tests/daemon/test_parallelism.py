"""``max-parallelism`` bounds the steps of every build of a store at once (BuildKit's is the
daemon's), not each build's."""

from __future__ import annotations

import threading
from pathlib import Path

from support.engine import require_runc
from support.pybkd import BASE_CONFIG, Pybkd

STEP = ("RUN --network=none sh -c 'cut -d\" \" -f1 /proc/uptime > /t0; sleep 1; "
        "cut -d\" \" -f1 /proc/uptime > /t1; echo {n} > /n'\n")


def test_two_builds_share_one_slot(tmp_path, busybox_layout):
    require_runc()
    daemon = Pybkd(tmp_path, BASE_CONFIG + "max-parallelism = 1\n")
    try:
        done = {}

        def build(n: int) -> None:
            ctx = tmp_path / f"ctx{n}"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text("FROM busybox\n" + STEP.format(n=n) +
                                            "FROM scratch\nCOPY --from=0 /t0 /t1 /n /\n")
            done[n] = daemon.pybk("build", "--no-cache", "-q", "--build-context",
                                  f"busybox=oci-layout://{busybox_layout}", "-o",
                                  f"type=local,dest={tmp_path / f'out{n}'}", str(ctx))

        threads = [threading.Thread(target=build, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spans = []
        for n in (1, 2):
            assert done[n].returncode == 0, done[n].stderr.decode()
            out = Path(tmp_path / f"out{n}")
            assert out.joinpath("n").read_text() == f"{n}\n"
            spans.append((float(out.joinpath("t0").read_text()),
                          float(out.joinpath("t1").read_text())))
        (a0, a1), (b0, b1) = sorted(spans)
        assert a1 <= b0, f"the two RUN steps overlapped: {spans}"
    finally:
        daemon.stop()
