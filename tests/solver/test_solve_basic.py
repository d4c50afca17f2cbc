"""End-to-end: image source + exec + local export, on real runc and a real registry."""


from pybk.core import llb


def test_image_run_and_export(client, busybox_ref, recorder, tmp_path):
    state = (llb.image(busybox_ref)
             .run("echo hello > /greeting && mkdir -p /out && echo x > /out/y").root())
    result = client.solve(state, progress=recorder)
    out = tmp_path / "out"
    client.export_local(result, out)
    assert (out / "greeting").read_text() == "hello\n"
    assert (out / "bin" / "busybox").exists()
    assert client.executor.calls == 1
    assert result.stats.executed == 2
