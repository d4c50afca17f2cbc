"""``--provenance`` / ``--attest type=provenance``: SLSA provenance attached as BuildKit does
(an attestation manifest per image in the index; a provenance.json next to local files)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from support.busybox import skopeo_inspect
from support.engine import require_runc

from pybk.core.cli.commands import main

DOCKERFILE = (
    "FROM busybox\n"
    "ARG FOO\n"
    "RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /secret-size "
    "&& echo \"$FOO\" > /foo\n"
    "COPY Dockerfile /Dockerfile.copy\n"  # a local source: materials are not complete
)
SECRET = "s3cr3t-value-never-in-provenance"


@pytest.fixture
def context(tmp_path):
    require_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "tok").write_text(SECRET)
    return ctx


def _build(tmp_path, context, layout, capsys, *args, root="store"):
    code = main(["--root", str(tmp_path / root), "build", "--progress", "quiet",
                 "--build-context", f"busybox=oci-layout://{layout}",
                 "--secret", f"id=tok,src={tmp_path / 'tok'}", "--build-arg", "FOO=bar",
                 *args, str(context)])
    err = capsys.readouterr().err
    return code, err


def _blob(layout, digest):
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def _raw_blob(layout, digest) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _image_index(layout):
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
    return top, _blob(layout, top["digest"])


def _attestations(layout, index):
    images = [m for m in index["manifests"]
              if (m.get("annotations") or {}).get("vnd.docker.reference.type") is None]
    atts = [m for m in index["manifests"] if m not in images]
    return images, atts


def test_min_provenance_in_oci_index(tmp_path, context, busybox_layout, capsys):
    layout = tmp_path / "layout"
    code, err = _build(tmp_path, context, busybox_layout, capsys, "--provenance=true",
                       "-o", f"type=oci,tar=false,dest={layout}")
    assert code == 0, err
    _, index = _image_index(layout)
    images, atts = _attestations(layout, index)
    assert len(images) == 1 and len(atts) == 1
    att = atts[0]
    assert att["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert att["annotations"]["vnd.docker.reference.digest"] == images[0]["digest"]
    manifest = _blob(layout, att["digest"])
    assert _blob(layout, manifest["config"]["digest"])["os"] == "unknown"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.in-toto+json"
    assert layer["annotations"]["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v0.2"
    raw = _raw_blob(layout, layer["digest"])
    assert SECRET.encode() not in raw
    statement = json.loads(raw)
    assert statement["_type"] == "https://in-toto.io/Statement/v0.1"
    assert statement["subject"] == [{"name": "_",
                                     "digest": {"sha256": images[0]["digest"].split(":")[1]}}]
    predicate = statement["predicate"]
    assert predicate["buildType"] == "https://mobyproject.org/buildkit@v1"
    params = predicate["invocation"]["parameters"]
    assert params["frontend"] == "dockerfile.v0"
    assert "build-arg:FOO" not in params["args"]  # min mode leaves build arguments out
    assert "secrets" not in params and "ssh" not in params
    assert {"name": "context"} in params["locals"]
    busybox_manifest = _blob(busybox_layout, json.loads(
        (busybox_layout / "index.json").read_text())["manifests"][0]["digest"])
    assert busybox_manifest["layers"]  # the base is a real image
    (material,) = predicate["materials"]
    assert material["uri"] == "oci-layout://busybox"
    assert material["digest"]["sha256"] == json.loads(
        (busybox_layout / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    meta = predicate["metadata"]
    assert meta["completeness"] == {"parameters": False, "environment": True,
                                    "materials": False}
    assert meta["https://mobyproject.org/buildkit@v1#hermetic"] is False  # RUN had network
    assert "buildConfig" not in predicate
    if shutil.which("skopeo"):
        raw_index = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}"],
                                   capture_output=True, text=True, check=True).stdout
        assert json.loads(raw_index)["manifests"] == index["manifests"]


def test_max_provenance_v1_has_steps_args_and_secret_ids_only(tmp_path, context,
                                                              busybox_layout, capsys):
    layout = tmp_path / "layout"
    code, err = _build(tmp_path, context, busybox_layout, capsys,
                       "--attest", "type=provenance,mode=max,version=v1,builder-id=https://ci/1",
                       "-o", f"type=oci,tar=false,dest={layout}")
    assert code == 0, err
    _, index = _image_index(layout)
    _, (att,) = _attestations(layout, index)
    layer = _blob(layout, att["digest"])["layers"][0]
    raw = _raw_blob(layout, layer["digest"])
    assert SECRET.encode() not in raw
    statement = json.loads(raw)
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    definition = statement["predicate"]["buildDefinition"]
    request = definition["externalParameters"]["request"]
    assert request["args"]["build-arg:FOO"] == "bar"
    assert request["secrets"] == [{"id": "tok"}]
    steps = definition["internalParameters"]["buildConfig"]["llbDefinition"]
    runs = [s for s in steps if "exec" in s["op"]["Op"]]
    assert len(runs) == 1 and runs[0]["inputs"][0].startswith("step")
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["id"] == "https://ci/1"
    assert details["metadata"]["buildkit_completeness"]["request"] is True
    locations = details["metadata"]["buildkit_metadata"]["source"]["locations"]
    assert runs[0]["id"] in locations  # the RUN maps back to its Dockerfile line


def test_local_export_writes_provenance_about_its_files(tmp_path, context, busybox_layout,
                                                       capsys):
    out = tmp_path / "out"
    code, err = _build(tmp_path, context, busybox_layout, capsys, "--provenance=max",
                       "-o", f"type=local,dest={out},attestation-prefix=build.")
    assert code == 0, err
    statement = json.loads((out / "build.provenance.json").read_text())
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects["foo"] == hashlib.sha256(b"bar\n").hexdigest()
    assert subjects["secret-size"] == hashlib.sha256(
        (out / "secret-size").read_bytes()).hexdigest()
    assert (out / "secret-size").read_text().strip() == str(len(SECRET))
    # inline-only: images only
    out2 = tmp_path / "out2"
    code, err = _build(tmp_path, context, busybox_layout, capsys,
                       "--provenance", "mode=min,inline-only=true",
                       "-o", f"type=local,dest={out2}")
    assert code == 0, err
    assert not (out2 / "provenance.json").exists() and (out2 / "foo").exists()


def test_push_with_provenance(tmp_path, context, busybox_layout, registry, capsys):
    name = f"{registry.host}/provenance/app:1"
    code, err = _build(tmp_path, context, busybox_layout, capsys, "--provenance=true",
                       "--output", f"type=image,name={name},push=true,registry.insecure=true")
    assert code == 0, err
    index = skopeo_inspect(name, raw=True)
    kinds = [(m.get("annotations") or {}).get("vnd.docker.reference.type")
             for m in index["manifests"]]
    assert kinds == [None, "attestation-manifest"]
    attestation = skopeo_inspect(f"{registry.host}/provenance/app@"
                                 f"{index['manifests'][1]['digest']}", raw=True)
    assert attestation["layers"][0]["mediaType"] == "application/vnd.in-toto+json"
    statement_subject = attestation["layers"][0]["annotations"]
    assert statement_subject["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v0.2"


def test_reproducible_with_source_date_epoch(tmp_path, busybox_layout, capsys):
    require_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY f /f\n")
    (ctx / "f").write_text("same\n")
    digests = []
    for root in ("a", "b"):
        code = main(["--root", str(tmp_path / root), "build", "--progress", "quiet",
                     "--build-context", f"busybox=oci-layout://{busybox_layout}",
                     "--build-arg", "SOURCE_DATE_EPOCH=1700000000", "--provenance=true",
                     "--metadata-file", str(tmp_path / f"{root}.json"),
                     "-o", f"type=oci,dest={tmp_path / root}.tar,rewrite-timestamp=true",
                     str(ctx)])
        assert code == 0, capsys.readouterr().err
        digests.append(json.loads((tmp_path / f"{root}.json").read_text())
                       ["containerimage.digest"])
    assert digests[0] == digests[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--sbom=true"], "pybk does not generate SBOMs"),
    (["--attest", "type=sbom"], "pybk does not generate SBOMs"),
    (["--attest", "type=provenance,mode=most"], "invalid mode 'most'"),
    (["--provenance", "version=v3"], "invalid version 'v3'"),
    (["--provenance", "colour=blue"], "unknown provenance parameter 'colour'"),
    (["--attest", "type=vex"], "type= must be provenance or sbom"),
])
def test_bad_attestation_flags(tmp_path, args, message, capsys):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    code = main(["--root", str(tmp_path / "store"), "build", *args, str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_disabled_provenance_and_sbom_change_nothing(tmp_path, context, busybox_layout,
                                                     capsys):
    layout = tmp_path / "layout"
    code, err = _build(tmp_path, context, busybox_layout, capsys, "--provenance=false",
                       "--sbom=false", "-o", f"type=oci,tar=false,dest={layout}")
    assert code == 0, err
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    assert top["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert not os.path.exists(layout / "provenance.json")


def test_hermetic_when_every_run_has_no_network(tmp_path, busybox_layout, capsys):
    require_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --network=none echo sealed > /x\n")
    out = tmp_path / "out"
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}",
                 "--provenance=true", "-o", f"type=local,dest={out}", str(ctx)])
    assert code == 0, capsys.readouterr().err
    metadata = json.loads((out / "provenance.json").read_text())["predicate"]["metadata"]
    assert metadata["https://mobyproject.org/buildkit@v1#hermetic"] is True
    assert metadata["completeness"]["materials"] is True  # nothing read from the context
