"""A gateway frontend written with pybk's Python SDK, run as a local process by the tests.

It records what each call answered in /report.json of its result."""

import json
import sys

from pybk.core import llb
from pybk.frontends.gateway import sdk


def build(gw: sdk.Gateway) -> sdk.Result:
    mode = gw.opts.get("build-arg:MODE", "")
    if mode == "raise":
        raise RuntimeError("the build file makes no sense")
    report = {"opts": gw.opts, "inputs": sorted(gw.inputs())}
    dockerfile = gw.read_file(gw.opts["filename"], input="dockerfile")
    report["dockerfile"] = dockerfile.decode()
    report["range"] = gw.read_file("message.txt", input="context", offset=6, length=4).decode()
    report["listing"] = [e["name"] for e in gw.read_dir(input="context")]
    report["txt_only"] = [e["name"] for e in gw.read_dir("/", input="context",
                                                         include_pattern="*.txt")]
    report["stat"] = gw.stat_file("message.txt", input="context")
    try:
        gw.read_file("missing.txt", input="context")
    except sdk.GatewayCallError as exc:
        report["missing"] = [exc.code, str(exc)]
    nested = gw.solve(llb.scratch().file(llb.mkdir("/d", 0o755).mkfile("/d/n.txt", 0o600, "n")))
    report["nested"] = [nested.id, nested.read_file("/d/n.txt").decode(),
                        [e["name"] for e in nested.read_dir("/d")], nested.stat_file("/d")]
    if "layout" in gw.opts:
        digest, config = gw.resolve_image_config(gw.opts["layout"])
        report["image"] = [digest, config["config"].get("Cmd")]
    inner = gw.solve(frontend="dockerfile.v0", frontend_opt={"filename": "inner.Dockerfile"})
    report["inner"] = inner.read_file("/from-dockerfile.txt").decode()
    gw.warn("sdk frontend was here")
    print("sdk frontend: done", file=sys.stderr)
    state = llb.scratch().file(llb.mkfile("/report.json", 0o644, json.dumps(report)))
    return sdk.Result(state, image_config={"config": {"Labels": {"sdk": "yes"}}},
                      metadata={"note": "from the sdk"})


if __name__ == "__main__":
    sdk.run(build, requires=["solve", "read_dir"])
