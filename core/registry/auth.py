"""Registry credentials and authorization: Docker's config.json, basic auth, bearer tokens.

Credentials come from ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``):
``auths`` entries (``auth`` = base64 ``user:password``, or ``username``/``password``), and ``credHelpers``/``credsStore`` through ``docker-credential-<name>``.
Bearer tokens (the ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` flow) are cached per
(realm, service, scopes) until shortly before they expire.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from pybk.core.errors import ConfigError, RegistryError
from pybk.core.model import Model

_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "docker.io")
_TOKEN_SLACK = 10.0
_DEFAULT_TOKEN_LIFETIME = 60.0


class Credentials(Model, repr=False):
    """A user name and secret for one registry host (never printed)."""

    username: str = ""
    password: str = ""

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r})"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def docker_config_file(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config.json to read: ``explicit``, else ``$DOCKER_CONFIG/config.json``, else ~/.docker."""
    if explicit is not None:
        return Path(explicit)
    directory = os.environ.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path.home() / ".docker" / "config.json"


def normalize_auth_key(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``http://h:5000/x`` → ``h:5000``."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip()).split("/", 1)[0]
    return "docker.io" if host in _HUB_ALIASES else host


class DockerCredentialStore:
    """Looks credentials up in a Docker client config file (read once, lazily)."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = docker_config_file(path)
        self._config: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._config is None:
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                text = "{}"
            except OSError as exc:
                raise ConfigError([f"cannot read: {exc.strerror}"], path=str(self.path)) from None
            try:
                data = json.loads(text or "{}")
            except json.JSONDecodeError as exc:
                raise ConfigError([f"line {exc.lineno}: {exc.msg}"], path=str(self.path)) from None
            self._config = data if isinstance(data, dict) else {}
        return self._config

    def get(self, host: str) -> Credentials | None:
        """Credentials for ``host`` (``docker.io`` for Docker Hub), or None."""
        config = self._load()
        host = normalize_auth_key(host)
        helpers = config.get("credHelpers") or {}
        helper = next((v for k, v in helpers.items() if normalize_auth_key(k) == host), None)
        if helper:
            return self._from_helper(helper, host)
        for key, entry in (config.get("auths") or {}).items():
            if normalize_auth_key(key) == host and isinstance(entry, dict):
                found = self._from_entry(key, entry)
                if found is not None:
                    return found
        if config.get("credsStore"):
            return self._from_helper(config["credsStore"], host)
        return None

    def _from_entry(self, key: str, entry: Mapping[str, Any]) -> Credentials | None:
        username, password = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=False).decode()
            except (ValueError, UnicodeDecodeError):
                raise ConfigError([f"auths.{key}.auth: not base64 of user:password"],
                                  path=str(self.path)) from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ConfigError([f"auths.{key}.auth: decoded value has no ':'"], path=str(self.path))
        if not (username or password):
            return None
        return Credentials(username=username, password=password)

    def _from_helper(self, helper: str, host: str) -> Credentials | None:
        program = f"docker-credential-{helper}"
        candidates = [host, f"https://{host}"]
        if host == "docker.io":
            candidates = ["https://index.docker.io/v1/", *candidates]
        for server in candidates:
            try:
                proc = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                                      timeout=30, check=False)
            except FileNotFoundError:
                raise ConfigError([f"credential helper {program!r} not found in PATH"],
                                  path=str(self.path)) from None
            if proc.returncode != 0:
                continue
            try:
                answer = json.loads(proc.stdout)
            except json.JSONDecodeError:
                raise RegistryError(f"credential helper {program} answered with invalid JSON") from None
            return Credentials(username=answer.get("Username") or "", password=answer.get("Secret") or "")
        return None


def parse_www_authenticate(header: str) -> list[tuple[str, dict[str, str]]]:
    """Challenges of a ``WWW-Authenticate`` header: ``[(scheme lowercased, params)]``."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, text = 0, header
    token = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)')
    param = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*,?')
    while pos < len(text):
        match = token.match(text, pos)
        if not match:
            break
        scheme, pos = match.group(1).lower(), match.end()
        params: dict[str, str] = {}
        while True:
            pm = param.match(text, pos)
            if not pm:
                break
            value = pm.group(3) if pm.group(3) is not None else pm.group(2)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = pm.end()
        challenges.append((scheme, params))
        while pos < len(text) and text[pos] in ", ":
            pos += 1
    return challenges


TokenFetcher = Callable[[str, list[tuple[str, str]], "Credentials | None"], Awaitable[dict[str, Any]]]


class _Challenge(Model):
    scheme: str
    realm: str = ""
    service: str = ""


class Authenticator:
    """Remembers each host's auth scheme and caches bearer tokens per scope set.

    ``fetch_token(realm, params, credentials)`` performs the token request and returns the JSON
    answer; the registry client supplies it so TLS settings of the realm host apply.
    """

    def __init__(self, credentials: Callable[[str], Credentials | None], fetch_token: TokenFetcher):
        self._credentials = credentials
        self._fetch_token = fetch_token
        self._challenges: dict[str, _Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...]], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str, tuple[str, ...]], asyncio.Lock] = {}
        self._creds_cache: dict[str, Credentials | None] = {}
        self.token_requests = 0

    def credentials(self, host: str) -> Credentials | None:
        if host not in self._creds_cache:
            self._creds_cache[host] = self._credentials(host)
        return self._creds_cache[host]

    def header(self, host: str, scopes: tuple[str, ...]) -> str | None:
        """The Authorization header to send to ``host`` now, if one is known."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(host)
            return creds.basic_header() if creds else None
        cached = self._tokens.get(self._key(challenge, scopes))
        if cached and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        return None

    async def authorize(self, host: str, www_authenticate: str, scopes: tuple[str, ...]) -> str:
        """Answer a 401 from ``host``: returns the header to retry with, or raises RegistryError."""
        challenges = parse_www_authenticate(www_authenticate or "")
        by_scheme = dict(challenges)
        creds = self.credentials(host)
        if "bearer" in by_scheme and by_scheme["bearer"].get("realm"):
            params = by_scheme["bearer"]
            challenge = _Challenge("bearer", params["realm"], params.get("service", ""))
            self._challenges[host] = challenge
            wanted = set(scopes)
            if params.get("scope"):
                wanted.update(params["scope"].split(" "))
            return f"Bearer {await self._token(challenge, tuple(sorted(wanted)), scopes, creds)}"
        if "basic" in by_scheme:
            self._challenges[host] = _Challenge("basic")
            if creds is None or not (creds.username or creds.password):
                raise RegistryError(
                    f"{host}: authentication required and no credentials found"
                    f" (add them to {docker_config_file()} with docker login)"
                )
            return creds.basic_header()
        raise RegistryError(f"{host}: unauthorized, and the registry offers no usable auth scheme"
                            f" ({www_authenticate or 'no WWW-Authenticate header'})")

    def forget(self, host: str, scopes: tuple[str, ...]) -> None:
        """Drop a token the registry refused."""
        challenge = self._challenges.get(host)
        if challenge is not None:
            self._tokens.pop(self._key(challenge, scopes), None)

    @staticmethod
    def _key(challenge: _Challenge, scopes: tuple[str, ...]) -> tuple[str, str, tuple[str, ...]]:
        return (challenge.realm, challenge.service, tuple(sorted(set(scopes))))

    async def _token(self, challenge: _Challenge, request_scopes: tuple[str, ...],
                     scopes: tuple[str, ...], creds: Credentials | None) -> str:
        key = self._key(challenge, scopes)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            params = [("service", challenge.service)] if challenge.service else []
            params += [("scope", s) for s in request_scopes]
            if creds and creds.username:
                params.append(("account", creds.username))
            self.token_requests += 1
            answer = await self._fetch_token(challenge.realm, params, creds)
            token = answer.get("token") or answer.get("access_token")
            if not token:
                raise RegistryError(f"token server {challenge.realm} answered without a token")
            try:
                lifetime = float(answer.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
            except (TypeError, ValueError):
                lifetime = _DEFAULT_TOKEN_LIFETIME
            self._tokens[key] = (token, time.monotonic() + max(lifetime - _TOKEN_SLACK, 1.0))
            return token
