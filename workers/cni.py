"""A small CNI invoker: network configuration lists run through the plugin binaries.

Follows the CNI specification (1.0.0, older versions passed through): for ``ADD`` each plugin
of a list is run in order with the list's ``name`` and ``cniVersion`` and the previous
plugin's result as ``prevResult``; ``DEL`` runs them in reverse with the result of the
``ADD``. A plugin gets its configuration on stdin and ``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME`` and ``CNI_PATH`` in its environment; it answers with a result
(or a ``{"code", "msg"}`` error) on stdout.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from pybk.core.errors import BuildError

#: where CNI plugins are looked for when ``cniBinaryPath`` is not set (BuildKit's default
#: first, then where Debian and Fedora install them)
DEFAULT_BINARY_DIRS = ("/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni")
#: the plugins pybk's own bridge network needs
BRIDGE_PLUGINS = ("bridge", "host-local", "loopback")


class CNIError(BuildError):
    """A CNI plugin failed (its own message, the plugin and the command)."""


def binary_dirs(configured: str = "") -> list[str]:
    """Directories searched for plugins: ``cniBinaryPath`` (``:``-separated) when set, else
    the usual install locations and ``$PATH``."""
    if configured:
        return [d for d in configured.split(os.pathsep) if d]
    return [*DEFAULT_BINARY_DIRS, *(d for d in os.environ.get("PATH", "").split(os.pathsep) if d)]


def find_plugin(name: str, dirs: Iterable[str]) -> str | None:
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def missing_plugins(names: Iterable[str], dirs: Sequence[str]) -> list[str]:
    return [n for n in names if find_plugin(n, dirs) is None]


def load_config_file(path: str) -> dict[str, Any]:
    """A ``.conflist`` (``plugins``) or a single-plugin ``.conf`` file, as a list."""
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except OSError as e:
        raise CNIError(f"cannot read CNI config {path}: {e.strerror}") from None
    except orjson.JSONDecodeError as e:
        raise CNIError(f"CNI config {path} is not valid JSON: {e}") from None
    return as_list(data, source=path)


def as_list(data: Any, *, source: str = "CNI config") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CNIError(f"{source}: a CNI config is a JSON object")
    if "plugins" not in data:  # a single plugin's .conf
        if "type" not in data:
            raise CNIError(f"{source}: neither \"plugins\" nor \"type\" is set")
        plugin = {k: v for k, v in data.items() if k not in ("name", "cniVersion")}
        data = {"cniVersion": data.get("cniVersion", "0.4.0"), "name": data.get("name", ""),
                "plugins": [plugin]}
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins or not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise CNIError(f"{source}: \"plugins\" must be a non-empty list of objects with a type")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise CNIError(f"{source}: the network has no name")
    return data


class CNINetwork:
    """One network configuration list and where its plugins are."""

    def __init__(self, conflist: dict[str, Any], dirs: Sequence[str]):
        self.conflist = as_list(conflist)
        self.dirs = list(dirs)
        self.name: str = self.conflist["name"]
        self.version: str = self.conflist.get("cniVersion", "1.0.0")

    def _plugin_conf(self, plugin: dict[str, Any], prev: Any) -> bytes:
        conf = copy.deepcopy(plugin)
        conf["name"] = self.name
        conf["cniVersion"] = self.version
        if prev is not None:
            conf["prevResult"] = prev
        return orjson.dumps(conf)

    def _prepare(self, command: str, plugin: dict[str, Any], *, container_id: str,
                 netns: str, ifname: str) -> tuple[str, dict[str, str]]:
        kind = plugin["type"]
        binary = find_plugin(kind, self.dirs)
        if binary is None:
            raise CNIError(f'CNI plugin "{kind}" not found in {os.pathsep.join(self.dirs)}')
        return binary, {
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_PATH": os.pathsep.join(self.dirs),
            "PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def _answer(self, command: str, plugin: dict[str, Any], code: int, out: bytes,
                err: bytes) -> Any:
        kind = plugin["type"]
        if code != 0:
            message = err.decode(errors="replace").strip()
            try:
                answer = orjson.loads(out)
                message = answer.get("msg", "") + (f": {answer['details']}"
                                                   if answer.get("details") else "")
            except (orjson.JSONDecodeError, AttributeError):
                pass
            raise CNIError(f"CNI {command} failed in plugin {kind} of network {self.name}: "
                           f"{message or f'exit status {code}'}")
        if command != "ADD":
            return None
        try:
            return orjson.loads(out)
        except orjson.JSONDecodeError:
            raise CNIError(f"CNI plugin {kind} answered ADD with invalid JSON") from None

    async def _call(self, command: str, plugin: dict[str, Any], prev: Any, *,
                    container_id: str, netns: str, ifname: str) -> Any:
        binary, env = self._prepare(command, plugin, container_id=container_id, netns=netns,
                                    ifname=ifname)
        proc = await asyncio.create_subprocess_exec(
            binary, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate(self._plugin_conf(plugin, prev))
        assert proc.returncode is not None
        return self._answer(command, plugin, proc.returncode, out, err)

    async def add(self, container_id: str, netns: str, ifname: str = "eth0") -> Any:
        """Attach ``netns``; the final result (interfaces, ips, routes, dns)."""
        result = None
        for plugin in self.conflist["plugins"]:
            result = await self._call("ADD", plugin, result, container_id=container_id,
                                      netns=netns, ifname=ifname)
        return result

    def delete(self, container_id: str, netns: str, ifname: str = "eth0",
               result: Any = None) -> None:
        """Detach (synchronously: it also runs at exit): every plugin in reverse; every
        plugin runs even when one fails (the first failure is raised at the end)."""
        failure: CNIError | None = None
        for plugin in reversed(self.conflist["plugins"]):
            try:
                binary, env = self._prepare("DEL", plugin, container_id=container_id,
                                            netns=netns, ifname=ifname)
                done = subprocess.run([binary], input=self._plugin_conf(plugin, result),
                                      capture_output=True, env=env, check=False)
                self._answer("DEL", plugin, done.returncode, done.stdout, done.stderr)
            except CNIError as e:
                failure = failure or e
        if failure is not None:
            raise failure


def bridge_conflist(bridge: str, subnet: str) -> dict[str, Any]:
    """pybk's own ``bridge`` network: a veth on ``bridge`` per namespace, an address from
    ``subnet`` (host-local IPAM), the bridge as default gateway. NAT and forwarding are the
    bridge's own rules (:func:`pybk.workers.network.bridge_rules`), made once per bridge
    rather than per namespace, which keeps a namespace's set-up to a few milliseconds."""
    return {
        "cniVersion": "1.0.0",
        "name": f"pybk-{bridge}",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True,
             "ipMasq": False, "hairpinMode": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}},
        ],
    }


def result_address(result: Any) -> tuple[str | None, str | None]:
    """``(address, gateway)`` of the first IPv4 entry of a CNI result (no prefix length)."""
    for ip in (result or {}).get("ips", []):
        address = ip.get("address", "")
        if ":" not in address:
            return address.split("/")[0] or None, ip.get("gateway")
    return None, None


def host_veths(result: Any) -> list[str]:
    """Host-side interfaces of a result that are not the bridge (no sandbox, not first)."""
    interfaces = (result or {}).get("interfaces", [])
    return [i["name"] for i in interfaces[1:] if not i.get("sandbox") and i.get("name")]
