"""The image config a Dockerfile stage builds: the base image's config made complete, the
state of a stage being converted, and the history entries BuildKit writes for each instruction."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pybk.core import llb
from pybk.core.model import Model, field

DEFAULT_SHELL = ("/bin/sh", "-c")
HISTORY_COMMENT = "buildkit.dockerfile.v0"


def go_quote_list(values: Iterable[str]) -> str:
    """A string list as Go's ``%q`` prints it: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String`` for the whole-millisecond values HEALTHCHECK allows."""
    if ns == 0:
        return "0s"
    seconds, rest = divmod(ns, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if not hours and not minutes and not seconds:
        return f"{rest / 1_000_000:g}ms"
    frac = f"{rest / 1e9:.9f}"[1:].rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    out += f"{minutes}m" if hours or minutes else ""
    return out + f"{seconds}{frac}s"


class StageState(Model, frozen=False):
    """What a stage has built so far."""

    state: llb.State
    image: dict
    args: dict[str, str]
    shell: list[str]
    label: str
    total: int
    platform: llb.Platform
    ignore_cache: bool = False
    #: the step numbers of this stage a ``--no-cache-filter`` selector (``stage:N``) names
    busted: frozenset[int] = frozenset()
    declared: list[str] = field(factory=list)
    #: ARGs given a value after an ENV of the same name (the base image's included): as in
    #: BuildKit, where an ARG adds itself to the stage's environment, later RUN steps and
    #: expansions see the ARG's value; the image config keeps the ENV's
    arg_over_env: set[str] = field(factory=set)
    index: int = 0
    cmd_set: bool = False

    @property
    def config(self) -> dict:
        return self.image["config"]

    def prefix(self, text: str) -> str:
        self.index += 1
        width = len(str(self.total))
        name = f"{self.label} " if self.label else ""
        return f"[{name}{self.index:>{width}d}/{self.total}] {text}"

    def env(self) -> dict[str, str]:
        """The expansion environment: ARGs, overridden by ENV (which includes the image's)
        unless the ARG was given its value after the ENV."""
        values = dict(self.args)
        values.update((key, value) for key, value in env_dict(self.config.get("Env") or []).items()
                      if key not in self.arg_over_env)
        return values

    def history(self, created_by: str, empty_layer: bool, created: str | None = None) -> None:
        entry: dict[str, Any] = {"created_by": created_by, "comment": HISTORY_COMMENT}
        if created:
            entry["created"] = created
        if empty_layer:
            entry["empty_layer"] = True
        self.image.setdefault("history", []).append(entry)


def env_dict(env: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)


def set_env(config: dict, key: str, value: str) -> None:
    env = list(config.get("Env") or [])
    for i, item in enumerate(env):
        if item.split("=", 1)[0] == key:
            env[i] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    config["Env"] = env


_STR_LISTS = ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild")
_STRS = ("WorkingDir", "User", "StopSignal")
_MAPS = ("Labels", "ExposedPorts", "Volumes", "Healthcheck")


def check_image_config(config: Any) -> Mapping[str, Any] | None:
    """``config`` (a base image's config, from a registry or an OCI layout: untrusted) when the
    fields the frontend reads have their OCI types; InputError naming the first one that does
    not. A whole config or just its ``config`` object are both accepted, as by base_image."""
    from pybk.core.errors import InputError

    if config is None:
        return None

    def bad(where: str, expected: str) -> InputError:
        return InputError(f"invalid image config: {where} must be {expected}")

    if not isinstance(config, Mapping):
        raise bad("the config", "a JSON object")
    for key in ("architecture", "os", "variant"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    inner = config.get("config", config) if "config" in config else config
    if inner is None:
        inner = {}
    if not isinstance(inner, Mapping):
        raise bad("config", "a JSON object")
    for key in _STR_LISTS:
        value = inner.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise bad(f"config.{key}", "a list of strings")
    for entry in inner.get("Env") or ():
        if not entry.partition("=")[0]:
            raise bad("config.Env", f"a list of NAME=VALUE (not {entry!r})")
    for key in _STRS:
        if inner.get(key) is not None and not isinstance(inner[key], str):
            raise bad(f"config.{key}", "a string")
    for key in _MAPS:
        if inner.get(key) is not None and not isinstance(inner[key], Mapping):
            raise bad(f"config.{key}", "a JSON object")
    labels = inner.get("Labels") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise bad("config.Labels", "an object of strings")
    if "config" in config:
        if config.get("history") is not None and not (
                isinstance(config["history"], list)
                and all(isinstance(h, Mapping) for h in config["history"])):
            raise bad("history", "a list of objects")
        rootfs = config.get("rootfs")
        if rootfs is not None and not (isinstance(rootfs, Mapping) and isinstance(
                rootfs.get("diff_ids", []), list)):
            raise bad("rootfs", "an object with a diff_ids list")
    return config


def config_platform(config: Mapping[str, Any] | None) -> llb.Platform | None:
    """The platform an image config declares (None when it declares none)."""
    if not config or not config.get("architecture") or not config.get("os"):
        return None
    return llb.Platform(os=config["os"], architecture=config["architecture"],
                        variant=config.get("variant") or "")


def same_platform(a: llb.Platform, b: llb.Platform) -> bool:
    """Platforms equal once arm64's default variant (v8) is normalised away."""
    def key(p: llb.Platform) -> tuple[str, str, str]:
        variant = p.variant or ""
        if p.architecture == "arm64" and variant == "v8":
            variant = ""
        return p.os, p.architecture, variant
    return key(a) == key(b) or (key(a)[:2] == key(b)[:2] and not (a.variant and b.variant))


def base_image(config: Mapping[str, Any] | None, platform: llb.Platform) -> dict:
    """A full image config dict from a resolver's answer (a whole config or its ``config``)."""
    image = copy.deepcopy(dict(config or {}))
    if "config" not in image:
        image = {"config": image}
    image["config"] = dict(image.get("config") or {})
    image["history"] = list(image.get("history") or [])
    image.setdefault("architecture", platform.architecture)
    image.setdefault("os", platform.os)
    if platform.variant and image["architecture"] == platform.architecture:
        image.setdefault("variant", platform.variant)
    image.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    if "PATH" not in env_dict(image["config"].get("Env") or []):
        set_env(image["config"], "PATH", llb.DEFAULT_PATH)
    return image


def apply_config(state: llb.State, config: dict) -> llb.State:
    for key, value in env_dict(config.get("Env") or []).items():
        state = state.env(key, value)
    if config.get("WorkingDir"):
        state = state.dir(config["WorkingDir"])
    if config.get("User"):
        state = state.user(config["User"])
    return state
