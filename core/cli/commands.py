"""The ``pybk`` command line.

Kept light: only argparse and pybk's own small modules are imported until a command needs more,
and the plugins' commands (``pybk_add_commands``) are asked for only when the command line may
involve one: a command no core table lists, or a help that lists them all.
Exit codes: 0 ok, 1 build failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from pybk.core import __version__
from pybk.core.cli.errors import run_reported
from pybk.core.errors import PluginValidationError, UsageError
from pybk.core.paths import default_config, default_root


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting, and takes no
    abbreviations of long options (as BuildKit's commands: ``--ro X`` is not ``--root X``,
    so a daemon's checks of ``--root``/``--config`` cannot be sidestepped)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


class Command(NamedTuple):
    """One ``pybk NAME`` or ``pybk debug NAME``."""

    name: str
    help: str
    #: called with the parsed arguments, returns the exit code; a ``"module:function"`` string
    #: is imported when the command runs
    run: Callable[[argparse.Namespace], int] | str
    #: adds the command's arguments to its parser (called whenever the parser is built: cheap)
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    #: the plugin that added the command (named on its errors), None for the core's
    plugin: str | None = None

    def __call__(self, ns: argparse.Namespace) -> int:
        run = self.run
        if isinstance(run, str):
            from importlib import import_module

            module, _, function = run.partition(":")
            run = getattr(import_module(module), function)
        if self.plugin is None:
            return run(ns)
        from pybk.core.plugins import get_plugin_manager

        with get_plugin_manager().annotate_errors(self.plugin):
            return run(ns)


class _PluginCommands:
    """Where the plugins' commands go in a command table."""


#: marks the place of the plugins' commands in :data:`COMMANDS` and :data:`DEBUG_COMMANDS`
PLUGIN_COMMANDS = _PluginCommands()


class CommandTable:
    """What ``pybk_add_commands`` implementations add their commands to."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.commands: dict[str | None, list[Command]] = {None: [], "debug": []}
        self._taken = set(taken)
        #: the plugin whose hook is being called
        self.plugin = "?"

    def add(self, name: str, run: Callable[[argparse.Namespace], int] | str, *, help: str,
            arguments: Callable[[argparse.ArgumentParser], None] | None = None,
            parent: str | None = None) -> None:
        """Add ``pybk NAME`` (``parent="debug"``: ``pybk debug NAME``); see
        :func:`pybk.core.hookspecs.pybk_add_commands`."""
        if parent not in self.commands:
            raise PluginValidationError(f"plugin {self.plugin!r} adds {name!r} under an "
                                        f"unknown command {parent!r} (known: debug)")
        path = f"{parent} {name}" if parent else name
        if path in self._taken:
            raise PluginValidationError(f"plugin {self.plugin!r} adds the command "
                                        f"'pybk {path}', which already exists")
        self._taken.add(path)
        self.commands[parent].append(Command(name, help, run, arguments, self.plugin))


def plugin_commands() -> CommandTable:
    """The plugins' commands, in plugin load order (built-ins first)."""
    from pybk.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    table = CommandTable([c.name for c in COMMANDS if isinstance(c, Command)]
                         + [f"debug {c.name}" for c in DEBUG_COMMANDS if isinstance(c, Command)])
    for impl in pm.hook.pybk_add_commands.get_hookimpls():
        table.plugin = impl.plugin_name
        with pm.annotate_errors(impl.plugin_name):
            impl.function(*[{"commands": table}[arg] for arg in impl.argnames])
    return table


def make_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    """The ``pybk`` parser; with ``plugins=False`` it has only the core's commands."""
    parser = _Parser(prog="pybk", description="Build container images, BuildKit-style.",
                     epilog="pybk builder create|ls|inspect|use|rm: builders of several pybkd "
                            "nodes, which `pybk build --builder NAME` routes to "
                            "(`pybk builder --help`)")
    parser.add_argument("--version", action="version", version=f"pybk {__version__}")
    parser.add_argument("--root", default=None, help="store directory (default: $PYBK_ROOT or "
                        "/var/lib/pybk for root, $XDG_DATA_HOME/pybk otherwise)")
    parser.add_argument("--config", default=None,
                        help="buildkitd.toml-format config file (default: $PYBK_CONFIG, else "
                        "$XDG_CONFIG_HOME/pybk/buildkitd.toml for a user other than root, "
                        "when it exists)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--addr", default=None, metavar="unix:///PATH|tcp://HOST:PORT",
                        help="run the command in the pybkd daemon at this address (default: "
                        "$PYBK_HOST, else $BUILDKIT_HOST; when unset, the store's daemon — on /run/pybk/pybkd.sock "
                        "for /var/lib/pybk, $XDG_RUNTIME_DIR/pybk/pybkd.sock for a user's "
                        "$XDG_DATA_HOME/pybk, ROOT/pybkd.sock for another store — if it runs as "
                        "this user with the store and config file this command would use, "
                        "else this process, which starts one for the next commands if the "
                        "config says [pybk] daemon = \"auto\"; '' (or PYBK_HOST=''): always "
                        "this process)")
    tls = parser.add_argument_group("TLS for a tcp:// daemon (buildctl's flags)")
    tls.add_argument("--tlscacert", metavar="PATH", help="CA certificate of the daemon")
    tls.add_argument("--tlscert", metavar="PATH", help="client certificate")
    tls.add_argument("--tlskey", metavar="PATH", help="client key")
    tls.add_argument("--tlsservername", metavar="NAME",
                     help="the name the daemon's certificate must have (default: the host)")
    tls.add_argument("--tlsdir", metavar="DIR",
                     help="a directory with ca.pem, cert.pem and key.pem")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    added = plugin_commands() if plugins else CommandTable()
    _add_commands(sub, _expand(COMMANDS, added.commands[None]))
    debug = sub.choices["debug"]
    dsub = debug.add_subparsers(dest="debug_command", metavar="WHAT", parser_class=_Parser,
                                action=_ChosenSubParsers)
    debug_commands = list(_expand(DEBUG_COMMANDS, added.commands["debug"]))
    _add_commands(dsub, debug_commands, when_chosen=True)
    debug.set_defaults(pybk_debug_commands=tuple(c.name for c in debug_commands))
    return parser


def _expand(table: Sequence[Command | _PluginCommands],
            plugins: Sequence[Command]) -> Iterator[Command]:
    for command in table:
        if isinstance(command, Command):
            yield command
        else:
            yield from plugins


def _add_commands(sub: Any, commands: Iterable[Command], *, when_chosen: bool = False) -> None:
    """One subparser per command; ``when_chosen``: its arguments are added when the command is
    chosen (:class:`_ChosenSubParsers`), not now."""
    for command in commands:
        parser = sub.add_parser(command.name, help=command.help)
        parser.set_defaults(pybk_run=command)
        if command.arguments is not None:
            if when_chosen:
                parser.pybk_arguments = command.arguments  # type: ignore[attr-defined]
            else:
                command.arguments(parser)


class _ChosenSubParsers(argparse._SubParsersAction):
    """Subcommands whose arguments are added when one is chosen: building the parser for
    ``pybk build`` does not import the modules of every ``pybk debug`` command
    (``fsck``, ``context`` …)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        chosen = self._name_parser_map.get(values[0]) if values else None
        add = getattr(chosen, "pybk_arguments", None)
        if add is not None:
            chosen.pybk_arguments = None  # type: ignore[union-attr]
            add(chosen)
        super().__call__(parser, namespace, values, option_string)


@functools.lru_cache(maxsize=2)
def shared_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The parser :func:`main` uses, built once per process (the daemon builds both before
    forking); it holds no per-run state, defaults that depend on the environment are resolved
    after parsing."""
    return make_parser(plugins=plugins)


def needs_plugins(argv: Sequence[str]) -> bool:
    """Whether parsing ``argv`` may involve the plugins' commands: False only when the command
    is surely one of the core's (or ``--version`` comes first); anything unusual says True."""
    valued = ("--root", "--config", "--addr")
    core = {c.name for c in COMMANDS if isinstance(c, Command)} - {"debug"}
    core_debug = {c.name for c in DEBUG_COMMANDS if isinstance(c, Command)}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--version":
            return False
        if arg == "--debug" or arg.partition("=")[0] in valued and "=" in arg:
            i += 1
        elif arg in valued and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            i += 2
        elif arg.startswith("-"):
            return True
        elif arg == "debug":
            return not (i + 1 < len(argv) and argv[i + 1] in core_debug)
        else:
            return arg not in core
    return True


def add_build_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("context", nargs="?", default=None, help="build context directory")
    a("-f", "--file", help="build file (default: CONTEXT/Dockerfile)")
    a("-t", "--tag", action="append", default=[], help="image name (repeatable)")
    a("--target", help="stage to build")
    a("--build-arg", action="append", default=[], metavar="K=V")
    a("--build-context", action="append", default=[], metavar="NAME=VALUE")
    a("--secret", action="append", default=[], metavar="id=ID[,src=PATH|env=VAR]")
    a("--ssh", action="append", default=[], metavar="default|ID[=SOCKET|KEY[,KEY...]|DIR]")
    a("-o", "--output", action="append", default=[], metavar="type=TYPE[,k=v]")
    a("--push", action="store_true", help="shorthand for --output type=registry")
    a("--load", action="store_true", help="shorthand for --output type=docker")
    a("--cache-from", action="append", default=[], metavar="type=TYPE[,k=v]")
    a("--cache-to", action="append", default=[], metavar="type=TYPE[,k=v]")
    a("--platform", action="append", default=[])
    a("--progress", default=None, help="auto|tty|plain|rawjson|quiet (default: "
      "$BUILDKIT_PROGRESS, else auto)")
    a("--no-cache", action="store_true")
    a("--no-cache-filter", action="append", default=[], metavar="STAGE|STAGE:N|#LINE",
      help="stages, or single steps (step N of a stage, the step at a line of the build "
      "file), built without the cache")
    a("--explain-cache", action="store_true",
      help="when the build ends, print each step's cache state and why it missed")
    a("--explain-cache-ref", metavar="REF",
      help="explain cache misses against this build record (implies --explain-cache; "
           "default: the previous build of the same target)")
    a("--check", action="store_true", help="run build checks instead of building")
    a("--call", default="build",
      help="build|check|outline|targets, with ,format=json for outline and targets")
    a("--metadata-file")
    a("--iidfile")
    a("--allow", action="append", default=[], metavar="ENTITLEMENT")
    a("--network", default="default")
    a("--add-host", action="append", default=[], metavar="HOST:IP")
    a("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
      help="a resource limit of every RUN (nofile=1024:2048)")
    a("--cgroup-parent", default="", metavar="PATH",
      help="the cgroup every RUN container is made under")
    a("--resource", action="append", default=[], metavar="KEY=VALUE,...",
      help="cgroup limits of every RUN: memory, memory-swap, cpu-shares, cpu-period, "
           "cpu-quota, cpuset-cpus, cpuset-mems")
    a("--label", action="append", default=[], metavar="K=V")
    a("--annotation", action="append", default=[], metavar="K=V")
    a("--frontend", help="frontend name (default: chosen from the build file)")
    a("--opt", action="append", default=[], metavar="K=V", help="frontend option")
    a("--llb", metavar="FILE|-", help="build a marshalled LLB definition instead of a file")
    a("--print-llb", action="store_true", help="print the frontend's LLB and exit")
    a("--pull", action="store_true")
    a("-q", "--quiet", action="store_true")
    a("--attest", action="append", default=[], metavar="type=provenance[,k=v]",
      help="attestations to attach (provenance; sbom needs a scanner pybk does not run)")
    a("--provenance", metavar="true|false|mode=min|max[,k=v]",
      help="shorthand for --attest type=provenance")
    a("--sbom", metavar="false", help="shorthand for --attest type=sbom (only false works)")


def parse_build_request(ns: argparse.Namespace, *, plugins: bool = True) -> Any:
    """Validate every build flag into a :class:`pybk.core.engine.request.BuildRequest`; the
    plugins named by ``--output`` and the caches check their attributes
    (:func:`check_request_plugins`) unless ``plugins`` is False (a remote daemon's client: the
    daemon checks them against its own plugins). Raises UsageError naming the flag."""
    from pybk.core.cli import buildopts as bo
    from pybk.core.engine.request import BuildRequest, OutputSpec

    exporter_types = cache_types = None
    if plugins:
        from pybk.core.plugins import get_plugin_manager

        pm = get_plugin_manager()
        # the registries (and the plugin modules behind them) only when a flag names one
        exporter_types = (pm.exporters().names() if ns.output or ns.push or ns.load or ns.tag
                          else [])
        cache_types = pm.cache_backends().names() if ns.cache_from or ns.cache_to else []

    outputs = [bo.parse_output(v, exporter_types) for v in ns.output]
    if ns.push:
        outputs.append(bo.parse_output("type=image,push=true" +
                                       (",name=" + '"' + ",".join(ns.tag) + '"' if ns.tag else ""),
                                       exporter_types))
    if ns.load:
        outputs.append(bo.load_output(exporter_types))
    if ns.tag:
        names = ",".join(ns.tag)
        outputs = [OutputSpec(o.type, {**o.attrs, "name": names}, load=o.load)
                   if o.type in ("image", "oci", "docker") and "name" not in o.attrs else o
                   for o in outputs]
        if not outputs:
            outputs.append(OutputSpec("image", {"name": names}))
    annotations = bo.parse_annotations(ns.annotation)
    if annotations:
        if not any(o.type in IMAGE_OUTPUTS for o in outputs):
            print("WARNING: --annotation: no image, oci or docker output to annotate",
                  file=sys.stderr)
        # as buildx: the flag's annotations join (and win over) each image output's attrs
        outputs = [OutputSpec(o.type, {**o.attrs, **annotations}, load=o.load)
                   if o.type in IMAGE_OUTPUTS else o for o in outputs]
    build_args = {}
    for value in ns.build_arg:
        key, val = bo.parse_build_arg(value)
        if val is not None:
            build_args[key] = val
    context = ns.context
    if context is None and not ns.llb:
        raise UsageError("a build context is required (e.g. pybk build .)")
    if context is not None and context != "-" and not os.path.isdir(context):
        raise UsageError(f"context directory {context!r} not found")
    if ns.file and ns.file != "-" and not os.path.isfile(ns.file):
        raise UsageError(f"build file {ns.file!r} not found", flag="--file")
    call, call_format = ("check", "text") if ns.check else bo.parse_call(ns.call)
    request = BuildRequest(
        context=context or "",
        file=ns.file,
        frontend=ns.frontend,
        frontend_opts=bo.parse_key_values(ns.opt, flag="--opt"),
        tags=tuple(ns.tag),
        target=ns.target,
        build_args=build_args,
        build_contexts=tuple(bo.parse_build_context(v) for v in ns.build_context),
        secrets=tuple(bo.parse_secret(v) for v in ns.secret),
        ssh=tuple(bo.parse_ssh(v) for v in ns.ssh),
        outputs=tuple(outputs),
        cache_from=tuple(bo.parse_cache(v, flag="--cache-from", known_types=cache_types)
                         for v in ns.cache_from),
        cache_to=tuple(bo.parse_cache(v, flag="--cache-to", known_types=cache_types)
                       for v in ns.cache_to),
        platforms=bo.parse_platforms(ns.platform),
        progress=bo.parse_choice(ns.progress or os.environ.get("BUILDKIT_PROGRESS", "auto"),
                                 bo.PROGRESS_MODES, flag="--progress"),
        no_cache=ns.no_cache,
        no_cache_filter=tuple(s for v in ns.no_cache_filter for s in v.split(",") if s),
        entitlements=tuple(bo.parse_allow(v) for v in ns.allow),
        network=bo.parse_choice(ns.network, bo.NETWORK_MODES, flag="--network"),
        add_hosts=tuple(bo.parse_add_host(v) for v in ns.add_host),
        ulimits=tuple(bo.parse_ulimit(v) for v in ns.ulimit),
        cgroup_parent=bo.parse_cgroup_parent(ns.cgroup_parent),
        resources=bo.parse_resources(ns.resource),
        labels=bo.parse_key_values(ns.label, flag="--label"),
        annotations=annotations,
        metadata_file=ns.metadata_file,
        iidfile=ns.iidfile,
        call=call,
        call_format=call_format,
        llb=ns.llb,
        print_llb=ns.print_llb,
        pull=ns.pull,
        quiet=ns.quiet,
        provenance=bo.parse_attests(ns.attest, ns.provenance, ns.sbom),
        explain_cache=ns.explain_cache or bool(ns.explain_cache_ref),
        explain_cache_ref=ns.explain_cache_ref,
    )
    if plugins:
        check_request_plugins(request)
    return request


#: the outputs ``--annotation`` and ``-t`` apply to (buildx's)
IMAGE_OUTPUTS = ("image", "oci", "docker")


def check_request_plugins(request: Any) -> None:
    """Each output's exporter and each cache's backend exists and takes its attributes (a
    UsageError naming the flag otherwise)."""
    from pybk.core.cli.buildopts import check_known
    from pybk.core.engine.resolve import resolve
    from pybk.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if request.outputs:
        names = pm.exporters().names()
        for output in request.outputs:
            check_known(output.type, names, flag="--output", what="output type")
            resolve("exporter", output, where="--output", pm=pm)
    for specs, flag, kind in ((request.cache_from, "--cache-from", "cache importer"),
                              (request.cache_to, "--cache-to", "cache exporter")):
        for spec in specs:
            check_known(spec.type, pm.cache_backends().names(), flag=flag, what="cache type")
            resolve(kind, spec, where=flag, pm=pm)


# -- commands ----------------------------------------------------------------------------------


def cmd_build(ns: argparse.Namespace) -> int:
    request = parse_build_request(ns)
    if request.llb:
        from pybk.core.engine.build import run_llb_build

        if request.llb == "-":
            data = sys.stdin.buffer.read()
        else:
            try:
                with open(request.llb, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise UsageError(f"cannot read {request.llb}: {exc.strerror}", flag="--llb") from None
        return run_llb_build(data, request, root=store_root(ns.root),
                             config_path=ns.config)
    from pybk.core.engine.build import run_build

    return run_build(request, root=store_root(ns.root), config_path=ns.config)


def cmd_plugins(ns: argparse.Namespace) -> int:
    from pybk.core.plugins import get_plugin_manager

    rows = get_plugin_manager().describe()
    header = ("NAME", "KIND", "DISTRIBUTION", "VERSION")
    table = [header] + [(r.name, r.kind, r.distribution, r.version) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_debug(ns: argparse.Namespace) -> int:
    """``pybk debug`` without WHAT."""
    raise UsageError(f"pybk debug: choose one of {', '.join(ns.pybk_debug_commands)}")


def debug_config(ns: argparse.Namespace) -> int:
    from pybk.core.cli.configcmd import debug_config_command

    text, code = debug_config_command(ns.file or ns.config)
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def debug_dump_llb(ns: argparse.Namespace) -> int:
    from pybk.core.llb.dump import dump_dot, dump_llb

    data = _read_input(ns.file)
    sys.stdout.write(dump_dot(data) if ns.dot else dump_llb(data))
    return 0


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def store_root(given: str | None) -> str:
    """``--root`` (else the default store directory), checked to be a directory a store can be
    made in: a regular file, or a place where nothing can be created, is a usage error."""
    import tempfile

    root = given or default_root()
    flag = "--root" if given else None
    if os.path.lexists(root) and not os.path.isdir(root):
        raise UsageError(f"{root} is not a directory", flag=flag)
    try:
        os.makedirs(root, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".pybk-probe-", dir=root))
    except OSError as exc:
        raise UsageError(f"{root}: cannot make a store there: {exc.strerror or exc}",
                         flag=flag) from None
    return root


def _open_store(ns: argparse.Namespace) -> Any:
    from pybk.core.config.loader import load_config
    from pybk.core.store.store import Store

    config, _ = load_config(ns.config)
    return Store.open(store_root(ns.root), snapshotter=config.worker.oci.snapshotter)


def cmd_du(ns: argparse.Namespace) -> int:
    from pybk.core.cli.diskusage import print_du, print_explained

    if ns.explain:
        from pybk.core.config.gc import gc_prune_rules
        from pybk.core.config.loader import load_config

        config, _ = load_config(ns.config)
        with _open_store(ns) as store:
            disk = os.statvfs(store.root)
            rules = gc_prune_rules(config.worker.oci, disk.f_blocks * disk.f_frsize)
            rows = store.explain_gc(rules)
        if ns.filter:
            from pybk.core.store.gc import parse_filters

            match = parse_filters(ns.filter)
            rows = [(info, verdict) for info, verdict in rows if match(info)]
        print_explained(rows, rules, sys.stdout)
        return 0
    with _open_store(ns) as store:
        rows = store.du(ns.filter)
    print_du(rows, sys.stdout, verbose=ns.verbose, filtered=bool(ns.filter))
    return 0


def cmd_prune(ns: argparse.Namespace) -> int:
    from pybk.core.cli.diskusage import print_pruned
    from pybk.core.units import parse_duration

    try:
        keep_duration = parse_duration(ns.keep_duration)
    except ValueError as exc:
        raise UsageError(str(exc), flag="--keep-duration") from None
    for flag in ("keep_storage", "keep_storage_min", "free_storage"):
        if getattr(ns, flag) < 0:
            raise UsageError("must not be negative", flag="--" + flag.replace("_", "-"))
    with _open_store(ns) as store:
        deleted = store.prune(ns.filter, all=ns.all, keep_duration=keep_duration,
                              max_used_space=int(ns.keep_storage * 1e6),
                              reserved_space=int(ns.keep_storage_min * 1e6),
                              min_free_space=int(ns.free_storage * 1e6),
                              dry_run=ns.dry_run)
    print_pruned(deleted, sys.stdout, verbose=ns.verbose, dry_run=ns.dry_run)
    return 0


def _prune_arguments(prune: argparse.ArgumentParser) -> None:
    prune.add_argument("--all", action="store_true", help="include internal/frontend records")
    prune.add_argument("--keep-duration", default="0", metavar="DURATION",
                       help="keep records used within this duration (e.g. 48h)")
    prune.add_argument("--keep-storage", type=float, default=0.0, metavar="MB",
                       help="keep data below this size")
    prune.add_argument("--keep-storage-min", type=float, default=0.0, metavar="MB",
                       help="always allow data above this size")
    prune.add_argument("--free-storage", type=float, default=0.0, metavar="MB",
                       help="keep this much disk space free")
    prune.add_argument("-f", "--filter", action="append", default=[], help="filter records")
    prune.add_argument("--dry-run", action="store_true",
                       help="list what would be removed and the space freed; remove nothing")
    prune.add_argument("-v", "--verbose", action="store_true")


def _du_arguments(du: argparse.ArgumentParser) -> None:
    du.add_argument("-f", "--filter", action="append", default=[], help="filter records")
    du.add_argument("-v", "--verbose", action="store_true")
    du.add_argument("--explain", action="store_true",
                    help="what the configured GC policies would do to each record now, and why")


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    """``pybk history ls|inspect|logs|rm|export|trace`` (buildx's ``history`` commands)."""
    sub = parser.add_subparsers(dest="history_command", metavar="WHAT", parser_class=_Parser)
    ref_help = "a build ref, a unique prefix of one, ^N (N builds before the newest) or latest"
    ls = sub.add_parser("ls", help="list build records")
    ls.add_argument("--format", default="table", metavar="table|json")
    ls.add_argument("--no-trunc", action="store_true", help="do not shorten names")
    inspect = sub.add_parser("inspect", help="inspect a build record")
    inspect.add_argument("ref", nargs="?", default="latest", help=ref_help)
    inspect.add_argument("--format", default="pretty", metavar="pretty|json")
    inspect.add_argument("--cache", action="store_true",
                         help="each step's cache state and why it missed")
    logs = sub.add_parser("logs", help="print the logs of a build record")
    logs.add_argument("ref", nargs="?", default="latest", help=ref_help)
    logs.add_argument("--progress", default="plain", metavar="plain|rawjson")
    rm = sub.add_parser("rm", help="remove build records")
    rm.add_argument("refs", nargs="*", metavar="REF", help=ref_help)
    rm.add_argument("--all", action="store_true", help="remove every build record")
    export = sub.add_parser("export", help="write a build record to a file (JSON)")
    export.add_argument("ref", nargs="?", default="latest", help=ref_help)
    export.add_argument("-o", "--output", required=True, metavar="FILE|-")
    trace = sub.add_parser("trace", help="write a build record as Chrome trace-event JSON")
    trace.add_argument("ref", nargs="?", default="latest", help=ref_help)
    trace.add_argument("-o", "--output", required=True, metavar="FILE|-")


def _file_argument(default: str | None) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", nargs="?", default=default)

    return add


def _dump_llb_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="-",
                        help="the definition (as --print-llb writes it; default: stdin)")
    parser.add_argument("--dot", action="store_true",
                        help="print the graph for Graphviz (dot -Tsvg) instead of JSON lines")


def _workers_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose output")


def debug_context(ns: argparse.Namespace) -> int:
    from pybk.core.cli.contextcmd import debug_context_command

    return debug_context_command(ns, store_root(ns.root))


def _context_arguments(parser: argparse.ArgumentParser) -> None:
    from pybk.core.cli.contextcmd import context_arguments

    context_arguments(parser)


def _fsck_arguments(parser: argparse.ArgumentParser) -> None:
    from pybk.core.cli.fsck import fsck_arguments

    fsck_arguments(parser)


#: ``pybk COMMAND``, in help order
COMMANDS: tuple[Command | _PluginCommands, ...] = (
    Command("build", "build from a Dockerfile, a pipeline or LLB", cmd_build, add_build_flags),
    Command("plugins", "list the installed plugins", cmd_plugins),
    PLUGIN_COMMANDS,
    Command("prune", "remove build cache records", cmd_prune, _prune_arguments),
    Command("du", "disk usage of the build cache", cmd_du, _du_arguments),
    Command("history", "build records: ls, inspect, logs, rm, export",
            "pybk.core.cli.history:history_command", _history_arguments),
    Command("debug", "inspect configuration, LLB, Dockerfiles and workers", cmd_debug),
)

#: ``pybk debug WHAT``, in help order: the core's (a command whose code lives in a module of
#: its own names it as ``"pybk.core.cli.MODULE:function"``), then the plugins'
DEBUG_COMMANDS: tuple[Command | _PluginCommands, ...] = (
    Command("config", "print a config file normalised as JSON", debug_config,
            _file_argument(None)),
    Command("dump-llb", "print an LLB definition, one op per line (--dot: as a graph)",
            debug_dump_llb, _dump_llb_arguments),
    Command("workers", "list the workers (ID, platforms; -v: labels and GC policy)",
            "pybk.core.cli.workers:debug_workers_command", _workers_arguments),
    Command("context", "what a build would send of its context, and why the rest is not sent",
            debug_context, _context_arguments),
    Command("fsck", "check the store (database, snapshots, blobs, leftovers); --repair fixes",
            "pybk.core.cli.fsck:debug_fsck_command", _fsck_arguments),
    PLUGIN_COMMANDS,
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_reported(functools.partial(_run, argv), debug="--debug" in argv)


def _run(argv: list[str]) -> int:
    parser = shared_parser(needs_plugins(argv))
    ns = parser.parse_args(argv)
    if ns.addr:
        raise UsageError("--addr is the pybk command's (pybk.core.cli.entry), not this module's")
    if ns.command is None:
        parser.print_help()
        return 2
    if getattr(ns, "config", None) is None:
        ns.config = default_config()
    return ns.pybk_run(ns)


if __name__ == "__main__":
    sys.exit(main())
