"""A ``yaml.v0`` pipeline → the Dockerfile frontend's typed instructions → LLB.

:func:`~pybk.frontends.yaml.pipeline.load_pipeline` reads and checks the file;
:func:`pipeline_to_dockerfile` turns the pipeline into the same
:class:`~pybk.frontends.dockerfile.commands.Dockerfile` object the Dockerfile parser produces
(locations point at the YAML lines, display texts are the equivalent Dockerfile instructions),
and :func:`yaml_to_llb` converts it with the Dockerfile converter, so a pipeline and its
Dockerfile twin give the same ops, the same op digests and share the cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.converter import KeyPath
from pybk.core.didyoumean import did_you_mean
from pybk.core.errors import InputError
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.yaml.loader import Mark
from pybk.frontends.yaml.pipeline import LoadedPipeline, duration_ns, load_pipeline, mount_spec
from pybk.frontends.yaml.schema import STEP_KINDS, Add, Command, Copy, Healthcheck, Run, Stage

LANGUAGE = "YAML"


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "\"'\\" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _pairs_text(pairs: Mapping[str, str]) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in pairs.items())


def _args_text(args: Mapping[str, str | None]) -> str:
    return " ".join(k if v is None else f"{k}={_quote(v)}" for k, v in args.items())


def _words_text(words: Sequence[str]) -> str:
    if any(not w or any(c.isspace() for c in w) for w in words):
        return json.dumps(list(words), ensure_ascii=False)
    return " ".join(words)


def _heredoc_name(script: str) -> str:
    lines = set(script.splitlines())
    name, n = "EOF", 0
    while name in lines:
        n += 1
        name = f"EOF{n}"
    return name


class RunStepInstruction(ins.RunInstruction, kw_only=True):
    """A ``run`` step: a RUN with environment variables for its command only."""

    env: tuple[ins.KeyValue, ...] = ()


class _Builder:
    def __init__(self, loaded: LoadedPipeline):
        self.doc = loaded.doc
        self.filename = loaded.doc.filename

    def location(self, path: KeyPath) -> ins.Location:
        mark: Mark = self.doc.mark(path)
        return ins.Location(self.filename, mark.line, max(mark.end_line, mark.line))

    def common(self, keyword: str, path: KeyPath, original: str, **extra: Any) -> dict:
        return {"keyword": keyword, "location": self.location(path),
                "original": f"{keyword} {original}".rstrip(), **extra}

    def args(self, args: Mapping[str, str | None], path: KeyPath) -> ins.ArgInstruction:
        return ins.ArgInstruction(**self.common("ARG", path, _args_text(args)),
                                  args=tuple(ins.ArgSpec(k, v) for k, v in args.items()))

    def env(self, env: Mapping[str, str], path: KeyPath) -> ins.EnvInstruction:
        return ins.EnvInstruction(**self.common("ENV", path, _pairs_text(env)),
                                  pairs=tuple(ins.KeyValue(k, v) for k, v in env.items()))

    def command(self, keyword: str, command: Command, path: KeyPath, cls: type) -> Any:
        if command.argv is not None:
            original = json.dumps(list(command.argv), ensure_ascii=False)
            return cls(**self.common(keyword, path, original), command=command.argv,
                       prepend_shell=False)
        return cls(**self.common(keyword, path, command.shell or ""),
                   command=(command.shell or "",), prepend_shell=True)

    def run(self, run: Run, path: KeyPath) -> RunStepInstruction:
        from pybk.frontends.dockerfile.parser import Heredoc

        flags = [f"--mount={mount_spec(m)}" for m in run.mounts]
        if run.network is not None:
            flags.append(f"--network={run.network}")
        if run.security is not None:
            flags.append(f"--security={run.security}")
        extra = {"mount_specs": tuple(flags_value[len("--mount="):] for flags_value in flags
                                      if flags_value.startswith("--mount=")),
                 "network": run.network, "security": run.security,
                 "env": tuple(ins.KeyValue(k, v) for k, v in run.env.items())}
        script = run.command.shell
        heredocs: tuple = ()
        if script is not None and "\n" in script.rstrip("\n"):
            name = _heredoc_name(script)
            heredocs = (Heredoc(name, content=script if script.endswith("\n")
                                else script + "\n"),)
            command: tuple[str, ...] = (f"<<{name}",)
            shown = command[0]
        elif script is not None:  # one line (a trailing newline of a block is dropped)
            command = (script.rstrip("\n"),)
            shown = command[0]
        else:
            command = run.command.argv or ()
            shown = json.dumps(list(command), ensure_ascii=False)
        original = " ".join([*flags, shown])
        return RunStepInstruction(**self.common("RUN", path, original, flags=tuple(flags),
                                                heredocs=heredocs, no_cache=run.no_cache),
                                  command=command, prepend_shell=script is not None, **extra)

    def copy(self, copy: Copy | Add, path: KeyPath) -> ins.Instruction:
        keyword = "COPY" if isinstance(copy, Copy) else "ADD"
        flags = []
        if isinstance(copy, Copy) and copy.from_:
            flags.append(f"--from={copy.from_}")
        if copy.chown is not None:
            flags.append(f"--chown={copy.chown}")
        if copy.chmod is not None:
            flags.append(f"--chmod={copy.chmod}")
        if copy.link:
            flags.append("--link")
        fields: dict[str, Any] = {"sources": tuple(copy.src), "dest": copy.dest,
                                  "chown": copy.chown or "", "chmod": copy.chmod or "",
                                  "link": copy.link, "excludes": tuple(copy.exclude)}
        if isinstance(copy, Copy):
            if copy.parents:
                flags.append("--parents")
            fields.update(from_=copy.from_ or "", parents=copy.parents)
            cls: type = ins.CopyInstruction
        else:
            if copy.keep_git_dir is not None:
                flags.append(f"--keep-git-dir={str(copy.keep_git_dir).lower()}")
            if copy.checksum is not None:
                flags.append(f"--checksum={copy.checksum}")
            if copy.unpack is not None:
                flags.append(f"--unpack={str(copy.unpack).lower()}")
            fields.update(keep_git_dir=copy.keep_git_dir, checksum=copy.checksum or "",
                          unpack=copy.unpack)
            cls = ins.AddInstruction
        flags += [f"--exclude={e}" for e in copy.exclude]
        original = " ".join([*flags, _words_text([*copy.src, copy.dest])])
        return cls(**self.common(keyword, path, original, flags=tuple(flags),
                                 no_cache=copy.no_cache), **fields)

    def step(self, step: Any, path: KeyPath) -> ins.Instruction:
        kind = next(k for k in STEP_KINDS if getattr(step, k) is not None)
        value = getattr(step, kind)
        where = (*path, kind)
        if kind == "run":
            return self.run(value, where)
        if kind in ("copy", "add"):
            return self.copy(value, where)
        if kind == "env":
            return self.env(value, where)
        if kind == "arg":
            return self.args(value, where)
        if kind == "workdir":
            return ins.WorkdirInstruction(**self.common("WORKDIR", where, value), path=value)
        return ins.UserInstruction(**self.common("USER", where, value), user=value)

    def healthcheck(self, check: Healthcheck, path: KeyPath) -> ins.HealthcheckInstruction:
        if check.disable:
            return ins.HealthcheckInstruction(**self.common("HEALTHCHECK", path, "NONE"),
                                              test=("NONE",))
        command = check.test or Command(shell="")
        test = ("CMD", *command.argv) if command.argv is not None else \
            ("CMD-SHELL", command.shell or "")
        durations = {key: duration_ns(getattr(check, key)) if getattr(check, key) else 0
                     for key in ("interval", "timeout", "start_period", "start_interval")}
        flags = [f"--{k.replace('_', '-')}={getattr(check, k)}" for k in durations
                 if getattr(check, k)]
        if check.retries is not None:
            flags.append(f"--retries={check.retries}")
        shown = json.dumps(list(command.argv)) if command.argv is not None else command.shell
        original = " ".join([*flags, "CMD", shown or ""])
        return ins.HealthcheckInstruction(**self.common("HEALTHCHECK", path, original),
                                          test=test, retries=check.retries or 0, **durations)

    def stage(self, name: str, stage: Stage, index: int) -> ins.Stage:
        base: KeyPath = ("stages", name)
        platform = f"--platform={stage.platform} " if stage.platform is not None else ""
        frm = ins.FromInstruction(
            **self.common("FROM", (*base, "from"), f"{platform}{stage.from_} AS {name}"),
            base_name=stage.from_, stage_name=name, stage_name_as_written=name,
            as_keyword="AS", platform=stage.platform)
        out: list[ins.Instruction] = []
        if stage.args:
            out.append(self.args(stage.args, (*base, "args")))
        if stage.env:
            out.append(self.env(stage.env, (*base, "env")))
        if stage.shell is not None:
            out.append(ins.ShellInstruction(
                **self.common("SHELL", (*base, "shell"), json.dumps(stage.shell)),
                shell=tuple(stage.shell)))
        if stage.workdir is not None:
            out.append(ins.WorkdirInstruction(
                **self.common("WORKDIR", (*base, "workdir"), stage.workdir), path=stage.workdir))
        if stage.user is not None:
            out.append(ins.UserInstruction(**self.common("USER", (*base, "user"), stage.user),
                                           user=stage.user))
        out += [self.step(step, (*base, "steps", i)) for i, step in enumerate(stage.steps)]
        if stage.labels:
            pairs = tuple(ins.KeyValue(k, v) for k, v in stage.labels.items())
            out.append(ins.LabelInstruction(
                **self.common("LABEL", (*base, "labels"), _pairs_text(stage.labels)),
                pairs=pairs))
        if stage.expose:
            out.append(ins.ExposeInstruction(
                **self.common("EXPOSE", (*base, "expose"), " ".join(stage.expose)),
                ports=tuple(stage.expose)))
        if stage.volumes:
            out.append(ins.VolumeInstruction(
                **self.common("VOLUME", (*base, "volumes"), json.dumps(stage.volumes)),
                volumes=tuple(stage.volumes)))
        if stage.stopsignal is not None:
            out.append(ins.StopsignalInstruction(
                **self.common("STOPSIGNAL", (*base, "stopsignal"), stage.stopsignal),
                signal=stage.stopsignal))
        if stage.healthcheck is not None:
            out.append(self.healthcheck(stage.healthcheck, (*base, "healthcheck")))
        if stage.entrypoint is not None:
            out.append(self.command("ENTRYPOINT", stage.entrypoint, (*base, "entrypoint"),
                                    ins.EntrypointInstruction))
        if stage.cmd is not None:
            out.append(self.command("CMD", stage.cmd, (*base, "cmd"), ins.CmdInstruction))
        return ins.Stage(index, frm, tuple(out))


def pipeline_to_dockerfile(loaded: LoadedPipeline) -> ins.Dockerfile:
    """The pipeline as the typed instructions the Dockerfile parser would produce."""
    from pybk.core.directives import Directives
    from pybk.frontends.dockerfile.parser import ParseResult

    builder = _Builder(loaded)
    pipeline = loaded.pipeline
    meta = (builder.args(pipeline.args, ("args",)),) if pipeline.args else ()
    stages = tuple(builder.stage(name, pipeline.stages[name], i)
                   for i, name in enumerate(loaded.order))
    ast = ParseResult(children=(), directives=Directives(), warnings=(),
                      lines=tuple(loaded.doc.lines()), filename=loaded.doc.filename)
    return ins.Dockerfile(filename=loaded.doc.filename, meta_args=meta, stages=stages, ast=ast)


def default_target(loaded: LoadedPipeline, target: str | None = None) -> str:
    """The stage to build: ``target`` (checked), the pipeline's ``target``, else the last."""
    stages = loaded.pipeline.stages
    if target:
        if target not in stages:
            raise InputError(f"unknown target stage '{target}'"
                             + did_you_mean(target, sorted(stages), quote="'"),
                             filename=loaded.doc.filename)
        return target
    return loaded.pipeline.target or list(stages)[-1]


def yaml_to_llb(data: bytes, *, filename: str = "pipeline.yaml", target: str | None = None,
                named_contexts: Mapping[str, Any] = {},  # noqa: B006 - read only
                **options: Any) -> Any:
    """Convert a pipeline to LLB; ``options`` are those of
    :func:`~pybk.frontends.dockerfile.convert.dockerfile_to_llb`. Returns its ConvertResult."""
    from pybk.frontends.dockerfile.convert import convert_dockerfile

    loaded = load_pipeline(data, filename, contexts=named_contexts)
    dockerfile = pipeline_to_dockerfile(loaded)
    return convert_dockerfile(dockerfile, bytes(data), language=LANGUAGE,
                              target=default_target(loaded, target),
                              named_contexts=named_contexts, **options)


__all__ = ["LANGUAGE", "RunStepInstruction", "default_target", "pipeline_to_dockerfile",
           "yaml_to_llb"]
