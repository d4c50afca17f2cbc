"""Why a cached rebuild imports each package (bench/imports.py prints these beside the cost).

A package that costs ≥ 1 ms and is missing here is a new import nobody has explained: the
test in tests/bench/test_imports.py fails until it is removed or its reason is written down.
Keys are bench/imports.py's groups (pybk's by room, other packages by top-level name).
"""

import sys

_HTTP = ("the async HTTP client, loaded when something must be fetched (a cached rebuild whose "
         "base tag is unchanged resolves it with one HEAD written on a socket instead)")
_HTTPX_STDLIB = ("the standard library's HTTP modules, imported by httpx (urllib.parse also by "
                 "pathlib at interpreter start-up)")
_LANGUAGE = "language support imported by pluggy, the model classes or the standard library itself"
_STARTUP = ("interpreter start-up: site, the editable install's finder (pathlib), .pth files "
            "of this machine's site-packages (importlib.resources, certifi); not pybk's")

REASONS = {
    # pybk
    "pybk.core.llb": "the LLB model (model classes of ops.proto): the cached definition is "
                     "decoded into ops whose digests are the solver's cache keys",
    "pybk.core.config": "the buildkitd.toml schema (model classes) and loader: registry, "
                        "worker, entitlement and GC settings",
    "pybk.core.registry": "resolving FROM's tag (reference parsing, auth, the client)",
    "pybk.core.interfaces": "the plugin interfaces the built-in plugins implement",
    "pybk.core.engine": "the build client, request, frontend-result cache and workers",
    "pybk.core.solver": "solving the cached definition (every vertex a cache hit)",
    "pybk.core.store": "the store: sqlite records, snapshots, leases, cache mounts",
    "pybk.core.progress": "progress events the solver emits (quiet only hides them)",
    "pybk.core.history": "the build's history record: a progress sink, one small file written "
                         "when the build ends ([history] retention applied then)",
    "pybk.core.images": "the image exporter's layers and chain ids",
    "pybk.core.fs": "syncing and checksumming the build context (a stat walk when unchanged)",
    "pybk.core.cli": "the command line",
    "pybk.core.directives": "the build file's # syntax= and # check= directives",
    "pybk.core.daemonstate": "the solver and the build count cache hits and builds for "
                             "pybkd's metrics (in memory; files only inside a daemon)",
    "pybk.core.plugins": "the plugin manager and the built-in plugin list",
    "pybk.core.units": "sizes and durations of the config",
    "pybk.core.converter": "option structuring helpers",
    "pybk.core.model": "the base of every value class (LLB messages, config tables, records)",
    "pybk.core.platform": "the host platform",
    "pybk.core.userns": "whether the engine runs in a user namespace (rootless): the worker, "
                        "the snapshotter and the file code ask it (one read of uid_map)",
    "pybk.core.http": "httpx loaded lean and the lazy TLS context",
    "pybk.core.serialize": "canonical JSON and digests",
    "pybk.exporters.image": "-t: the image exporter",
    "pybk.exporters.annotations": "-t: the image exporter's annotation attributes "
                                  "(annotation.*, --annotation)",
    "pybk.exporters.oci": "the exporter registry names every built-in exporter's class",
    "pybk.exporters.local": "the exporter registry names every built-in exporter's class",
    "pybk.frontends.gateway": "the # syntax= directive may name a gateway frontend",
    "pybk.frontends.dockerfile": "the Dockerfile frontend's registration (its parser is not "
                                 "loaded on a cache hit)",
    "pybk.workers": "the OCI worker's registration (runc is not started on a cache hit)",
    # third-party
    "attr": "attrs, for a plugin's attrs options or the attrs API on a model class",
    "attrs": "attrs, for a plugin's attrs options or the attrs API on a model class",
    "cattrs": "structures the config file and exporter/frontend options the plain way cannot",
    "pluggy": "the plugin manager",
    "orjson": "JSON for records and manifests",
    "httpx": _HTTP, "httpcore": _HTTP, "h11": _HTTP, "anyio": _HTTP, "sniffio": _HTTP,
    "idna": _HTTP, "certifi": _STARTUP,
    "zstandard": "zstd layers; also httpx's zstd content decoder",
    "typing_extensions": "imported by cattrs",
    # standard library
    "asyncio": "the engine runs on asyncio", "concurrent": "asyncio's thread pool",
    "selectors": "asyncio's event loop", "subprocess": "imported by asyncio",
    "signal": "imported by asyncio and the command line (Ctrl-C)",
    "socket": "the daemon client looks for a socket; registry connections",
    "ssl": "TLS (asyncio and httpx import it even for plain HTTP)", "_ssl": "TLS",
    "email": _HTTPX_STDLIB, "http": _HTTPX_STDLIB, "urllib": _HTTPX_STDLIB,
    "calendar": _HTTPX_STDLIB, "mimetypes": _HTTPX_STDLIB, "base64": _HTTPX_STDLIB,
    "logging": "imported by concurrent.futures and httpx",
    "traceback": "imported by logging", "textwrap": "imported by traceback and argparse",
    "sqlite3": "the store's database", "_sqlite3": "the store's database",
    "tomllib": "the built-in plugin list (plugins.toml) and the config file",
    "datetime": "timestamps of records and image configs", "_datetime": "timestamps",
    "string": "imported by tomllib", "json": "image configs and manifests",
    "dataclasses": "imported by orjson", "uuid": "imported by orjson",
    "tarfile": "layer tarballs (core.fs.archive)", "ctypes": "mount(2) through libc",
    "hashlib": "digests", "_hashlib": "digests", "argparse": "the command line",
    "gettext": "imported by argparse", "locale": "imported by gettext",
    "platform": "imported by the standard library (uuid, ssl)", "ipaddress": "loopback registries use plain HTTP",
    "tempfile": "atomic writes in the store", "shutil": "file copies in the store",
    "random": "imported by tempfile", "threading": "the store's locks",
    "pathlib": _STARTUP, "importlib": _STARTUP, "zipfile": _STARTUP, "site": _STARTUP,
    "encodings": _STARTUP, "__editable___pybk_0_1_0_finder": _STARTUP,
    "typing": _LANGUAGE, "inspect": _LANGUAGE, "dis": _LANGUAGE, "ast": _LANGUAGE,
    "tokenize": _LANGUAGE, "enum": _LANGUAGE, "re": _LANGUAGE, "collections": _LANGUAGE,
    "functools": _LANGUAGE, "weakref": _LANGUAGE, "contextlib": _LANGUAGE,
    "_collections_abc": _LANGUAGE, "opcode": _LANGUAGE, "linecache": _LANGUAGE,
    "copy": _LANGUAGE, "operator": _LANGUAGE, "struct": _LANGUAGE, "bisect": _LANGUAGE,
    "heapq": _LANGUAGE, "keyword": _LANGUAGE, "token": _LANGUAGE, "copyreg": _LANGUAGE,
    "_weakrefset": _LANGUAGE, "types": _LANGUAGE, "abc": _LANGUAGE, "warnings": _LANGUAGE,
    "fnmatch": _LANGUAGE, "posixpath": _LANGUAGE, "stat": _LANGUAGE, "os": _LANGUAGE,
    "io": _LANGUAGE, "codecs": _LANGUAGE, "errno": _LANGUAGE, "numbers": _LANGUAGE,
    "decimal": _LANGUAGE, "_decimal": _LANGUAGE, "quopri": _LANGUAGE, "binascii": _LANGUAGE,
    "zlib": "gzip layers", "gzip": "gzip layers", "_compression": "gzip layers",
    "bz2": "imported by tarfile", "lzma": "imported by tarfile", "_lzma": "imported by tarfile",
    "_bz2": "imported by tarfile", "_socket": "sockets", "select": "event loop",
    "_asyncio": "asyncio", "_ctypes": "mount(2) through libc", "pwd": "owner names",
    "grp": "group names", "shlex": "command lines", "glob": "file patterns",
    "secrets": "random names", "hmac": "imported by secrets",
    "_distutils_hack": _STARTUP, "sitecustomize": _STARTUP, "usercustomize": _STARTUP,
    "zipimport": _STARTUP, "org": "a failed probe of the standard library's copy module (Jython)",
    "queue": "asyncio's thread pool", "unicodedata": "imported by idna (httpx)",
    "array": "imported by socket", "fcntl": "file locks in the store", "math": _LANGUAGE,
    "reprlib": _LANGUAGE, "itertools": _LANGUAGE, "contextvars": "asyncio's context",
    "pybk": "the package", "pybk.core": "the package",
    "pybk.core.errors": "error types", "pybk.core.hookspecs": "the plugin hooks",
    "pybk.core.didyoumean": "suggestions for mistyped flags and options",
    "pybk.core.paths": "the default store path", "pybk.core.markers": "the plugin markers",
    "pybk.frontends.yaml": "the YAML frontend's registration",
    "pybk.core.remotecache": "cache import/export options of the build request",
    "pybk.core.builtin": "the built-in answers to the engine's hooks",
}


def reason(group: str, cost_us: int = 0) -> str | None:
    """Why ``group`` is imported, or None when nobody has said. A standard-library module
    under 2 ms that is not listed is explained generically (the C halves of modules, the
    small helpers the modules above import; a module of ~0.3 ms reads 1-2 ms on a loaded
    machine); pybk's and other packages' must be listed."""
    if group in REASONS:
        return REASONS[group]
    if group in sys.builtin_module_names:
        return "built into the interpreter (the C part of a standard module)"
    if group in sys.stdlib_module_names and cost_us < 2000:
        if group.startswith("_"):
            return "the C part of a standard-library module above"
        return "standard library, imported by a module above"
    return None
