"""The ``pybk`` command line.

Kept light: only argparse and pybk's own small modules are imported until a command needs more.
Exit codes: 0 ok, 1 build failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

from pybk.core import __version__
from pybk.core.errors import PybkError, UsageError
from pybk.core.paths import default_root


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pybk", description="Build container images, BuildKit-style.")
    parser.add_argument("--version", action="version", version=f"pybk {__version__}")
    parser.add_argument("--root", default=None, help="store directory (default: $PYBK_ROOT or "
                        "/var/lib/pybk for root, $XDG_DATA_HOME/pybk otherwise)")
    parser.add_argument("--config", default=None,
                        help="buildkitd.toml-format config file (default: $PYBK_CONFIG)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--addr", default=None, metavar="unix:///PATH",
                        help="run the command in the pybkd daemon at this address "
                        "(default: $PYBK_HOST; unset: in this process)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    build = sub.add_parser("build", help="build from a Dockerfile, a pipeline or LLB")
    _add_build_flags(build)

    sub.add_parser("plugins", help="list the installed plugins")

    images = sub.add_parser("images", help="the local image store: ls, tag, rm, inspect")
    images.add_argument("args", nargs=argparse.REMAINDER)

    prune = sub.add_parser("prune", help="remove build cache records")
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
    prune.add_argument("-v", "--verbose", action="store_true")

    du = sub.add_parser("du", help="disk usage of the build cache")
    du.add_argument("-f", "--filter", action="append", default=[], help="filter records")
    du.add_argument("-v", "--verbose", action="store_true")

    debug = sub.add_parser("debug", help="inspect configuration, LLB, Dockerfiles and workers")
    dsub = debug.add_subparsers(dest="debug_command", metavar="WHAT", parser_class=_Parser)
    cfg = dsub.add_parser("config", help="print a config file normalised as JSON")
    cfg.add_argument("file", nargs="?", default=None)
    llb = dsub.add_parser("dump-llb", help="print an LLB definition, one op per line")
    llb.add_argument("file", nargs="?", default="-")
    ast = dsub.add_parser("dump-ast", help="print a Dockerfile's parse in BuildKit's format")
    ast.add_argument("file", nargs="?", default="Dockerfile")
    dsub.add_parser("yaml-schema", help="print the JSON Schema of yaml.v0 pipelines")
    from pybk.core.cli.workers import add_workers_parser

    add_workers_parser(dsub)
    return parser


@functools.lru_cache(maxsize=1)
def shared_parser() -> argparse.ArgumentParser:
    """The parser :func:`main` uses, built once per process (the daemon builds it before
    forking); it holds no per-run state, defaults that depend on the environment are resolved
    after parsing."""
    return make_parser()


def _add_build_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("context", nargs="?", default=None, help="build context directory")
    a("-f", "--file", help="build file (default: CONTEXT/Dockerfile)")
    a("-t", "--tag", action="append", default=[], help="image name (repeatable)")
    a("--target", help="stage to build")
    a("--build-arg", action="append", default=[], metavar="K=V")
    a("--build-context", action="append", default=[], metavar="NAME=VALUE")
    a("--secret", action="append", default=[], metavar="id=ID[,src=PATH|env=VAR]")
    a("--ssh", action="append", default=[], metavar="default|ID[=SOCKET|KEY]")
    a("-o", "--output", action="append", default=[], metavar="type=TYPE[,k=v]")
    a("--push", action="store_true", help="shorthand for --output type=registry")
    a("--load", action="store_true", help="shorthand for --output type=docker")
    a("--cache-from", action="append", default=[], metavar="type=TYPE[,k=v]")
    a("--cache-to", action="append", default=[], metavar="type=TYPE[,k=v]")
    a("--platform", action="append", default=[])
    a("--progress", default=None, help="auto|tty|plain|rawjson|quiet (default: "
      "$BUILDKIT_PROGRESS, else auto)")
    a("--no-cache", action="store_true")
    a("--no-cache-filter", action="append", default=[], metavar="STAGE")
    a("--check", action="store_true", help="run build checks instead of building")
    a("--call", default="build", help="build|check|outline|targets")
    a("--metadata-file")
    a("--iidfile")
    a("--allow", action="append", default=[], metavar="ENTITLEMENT")
    a("--network", default="default")
    a("--add-host", action="append", default=[], metavar="HOST:IP")
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


def parse_build_request(ns: argparse.Namespace) -> Any:
    """Validate every build flag; raises UsageError naming the flag."""
    from pybk.core.cli import buildopts as bo
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
        outputs = [bo.OutputSpec(o.type, {**o.attrs, "name": names}, load=o.load)
                   if o.type in ("image", "oci", "docker") and "name" not in o.attrs else o
                   for o in outputs]
        if not outputs:
            outputs.append(bo.OutputSpec("image", {"name": names}))
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
    if outputs:
        resolve_plugin_options(pm, outputs, "--output", pm.exporters())
    request = bo.BuildRequest(
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
        labels=bo.parse_key_values(ns.label, flag="--label"),
        annotations=bo.parse_key_values(ns.annotation, flag="--annotation"),
        metadata_file=ns.metadata_file,
        iidfile=ns.iidfile,
        call="check" if ns.check else bo.parse_choice(ns.call, bo.CALL_MODES, flag="--call"),
        llb=ns.llb,
        print_llb=ns.print_llb,
        pull=ns.pull,
        quiet=ns.quiet,
        provenance=bo.parse_attests(ns.attest, ns.provenance, ns.sbom),
    )
    if request.cache_from:
        resolve_plugin_options(pm, request.cache_from, "--cache-from", pm.cache_backends(),
                               "resolve_importer")
    if request.cache_to:
        resolve_plugin_options(pm, request.cache_to, "--cache-to", pm.cache_backends(),
                               "resolve_exporter")
    return request


def resolve_plugin_options(pm: Any, specs: Sequence[Any], flag: str, registry: Any,
                           method: str = "resolve") -> list[Any]:
    """Structure each spec's attrs into its plugin's Options and let the plugin validate them
    (``resolve`` for exporters, ``resolve_importer``/``resolve_exporter`` for caches), so bad
    values fail before any build work starts."""
    from pybk.core.converter import structure_options

    instances = []
    for spec in specs:
        cls = registry.get(spec.type)
        options = structure_options(cls.Options, spec.attrs, where=flag)
        plugin_name, _ = registry.owner(spec.type)
        with pm.annotate_errors(plugin_name):
            instances.append(getattr(cls(), method)(options))
    return instances


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
        return run_llb_build(data, request, root=ns.root or default_root(),
                             config_path=ns.config)
    from pybk.core.engine.build import run_build

    return run_build(request, root=ns.root or default_root(), config_path=ns.config)


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
    what = ns.debug_command
    if what == "config":
        from pybk.core.config.schema import debug_config_command

        text, code = debug_config_command(ns.file or ns.config)
        print(text, file=sys.stderr if code else sys.stdout)
        return code
    if what == "dump-llb":
        from pybk.core.llb.dump import dump_llb

        data = _read_input(ns.file)
        sys.stdout.write(dump_llb(data))
        return 0
    if what == "dump-ast":
        from pybk.frontends.dockerfile.cli_support import dump_ast_command

        sys.stdout.write(dump_ast_command(ns.file))
        return 0
    if what == "yaml-schema":
        from pybk.frontends.yaml.cli_support import yaml_schema_command

        sys.stdout.write(yaml_schema_command())
        return 0
    if what == "workers":
        from pybk.core.cli.workers import debug_workers_command

        return debug_workers_command(ns)
    raise UsageError("pybk debug: choose one of config, dump-llb, dump-ast, yaml-schema, "
                     "workers")


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def cmd_images(ns: argparse.Namespace) -> int:
    from pybk.exporters.cli_support import images_command

    return images_command(list(ns.args), ns.root or default_root())


def _open_store(ns: argparse.Namespace) -> Any:
    from pybk.core.config.schema import load_config
    from pybk.core.store.store import Store

    config, _ = load_config(ns.config)
    return Store.open(ns.root or default_root(), snapshotter=config.worker.oci.snapshotter)


def cmd_du(ns: argparse.Namespace) -> int:
    from pybk.core.cli.diskusage import print_du

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
                              min_free_space=int(ns.free_storage * 1e6))
    print_pruned(deleted, sys.stdout, verbose=ns.verbose)
    return 0


COMMANDS = {"build": cmd_build, "plugins": cmd_plugins, "debug": cmd_debug,
            "images": cmd_images, "prune": cmd_prune, "du": cmd_du}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = shared_parser()
        ns = parser.parse_args(argv)
        if ns.addr is not None:
            from pybk.core.cli.entry import main as client_main

            return client_main(argv)
        if ns.command is None:
            parser.print_help()
            return 2
        if getattr(ns, "config", None) is None:
            ns.config = os.environ.get("PYBK_CONFIG") or None
        return COMMANDS[ns.command](ns)
    except PybkError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    from pybk.core.cli.entry import main as entry_main

    sys.exit(entry_main())
