"""Image references, parsed and normalised the way Docker does.

``busybox`` → ``docker.io/library/busybox:latest``; ``host:port/repo:tag@sha256:…`` keeps both
tag and digest (the digest wins when pulling).
"""

from __future__ import annotations

import ipaddress
import re

from pybk.core.errors import InputError
from pybk.core.model import Model, evolve

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})
DEFAULT_API_HOST = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
    r"(?::[0-9]+)?"
    r"|\[[0-9a-fA-F:.]+\](?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_MAX_NAME = 255


class Reference(Model):
    """A normalised image reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """``domain/path`` without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def api_host(self) -> str:
        """The host serving the registry API (Docker Hub's API lives elsewhere)."""
        return DEFAULT_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def object(self) -> str:
        """What to ask ``/v2/<path>/manifests/`` for: the digest if known, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar(self) -> str:
        """The short spelling Docker prints (``busybox:latest``, ``me/app@sha256:…``)."""
        name = self.repository
        if self.domain == DEFAULT_DOMAIN:
            name = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        return name + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        _check_tag(tag, tag)
        return evolve(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        _check_digest(digest, digest)
        return evolve(self, digest=digest)

    def _suffix(self) -> str:
        text = f":{self.tag}" if self.tag else ""
        return text + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.repository + self._suffix()


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text``; add ``:latest`` when it has neither tag nor digest.

    Raises InputError naming the reference when it is malformed.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"invalid reference format: {text!r} is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InputError(f"invalid reference format: {text!r} contains whitespace")
    remainder, digest = text, None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        _check_digest(digest, text)
    name, tag = remainder, None
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        _check_tag(tag, text)
    if not name:
        raise InputError(f"invalid reference format: {text!r} has no repository name")
    domain, path = _split_domain(name)
    if domain != DEFAULT_DOMAIN and not _DOMAIN.fullmatch(domain):
        raise InputError(f"invalid reference format: {text!r} has an invalid registry host {domain!r}")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if component.lower() != component and _PATH_COMPONENT.fullmatch(component.lower()):
            raise InputError(
                f"invalid reference format: repository name {path!r} must be lowercase"
                f" (in {text!r})"
            )
        raise InputError(
            f"invalid reference format: {text!r}: bad repository name component {component!r}"
        )
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise InputError(f"invalid reference format: {text!r}: repository name longer than 255")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain in LEGACY_DEFAULT_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _check_tag(tag: str, text: str) -> None:
    if not _TAG.fullmatch(tag):
        raise InputError(f"invalid reference format: {text!r}: bad tag {tag!r}")


def _check_digest(digest: str, text: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise InputError(f"invalid reference format: {text!r}: bad digest {digest!r}")
    algorithm, _, hexpart = digest.partition(":")
    want = _HEX_LENGTHS.get(algorithm)
    if want is None:
        raise InputError(f"invalid reference format: {text!r}: unsupported digest algorithm {algorithm!r}")
    if len(hexpart) != want or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise InputError(
            f"invalid reference format: {text!r}: {algorithm} digest must be {want} lowercase hex digits"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name``, ``name:port``, ``[v6]:port``) is this machine: ``localhost``,
    ``*.localhost`` or a loopback address."""
    if host.startswith("[") and "]" in host:
        name = host[1:host.index("]")]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
