"""Package URLs of images (in-toto subjects and provenance materials)."""

from __future__ import annotations

import urllib.parse


def image_purl(ref: str, platform: str | None) -> str:
    """The package URL of an image reference (``pkg:docker/alpine@3.17?platform=linux%2Famd64``)."""
    from pybk.core.registry import parse_reference

    parsed = parse_reference(ref.split("@", 1)[0])
    path = parsed.path
    if parsed.domain != "docker.io":
        path = f"{parsed.domain}/{path}"
    elif path.startswith("library/"):
        path = path[len("library/"):]
    purl = f"pkg:docker/{path}@{parsed.tag or 'latest'}"
    if platform:
        purl += "?platform=" + urllib.parse.quote(platform, safe="")
    return purl
