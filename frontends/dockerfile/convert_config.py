"""Dockerfile → LLB: the instructions that set the image config (ARG, ENV, LABEL, EXPOSE, CMD …)
and WORKDIR, each with the history entry BuildKit writes for it."""

from __future__ import annotations

from typing import Any

from pybk.core import llb
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile.imageconfig import (
    StageState,
    go_duration,
    go_quote_list,
    set_env,
)
from pybk.frontends.dockerfile.stages import StageConverter, Step, located_error
from pybk.frontends.dockerfile.values import expose_ports, parse_signal


def _arg(cv: StageConverter, ds: StageState, instruction: ins.ArgInstruction, _: int) -> None:
    shown = []
    for spec in instruction.args:
        cv.consumed.add(spec.key)
        default = None
        valued = True
        if spec.default is not None:
            default = cv.expander(ds, instruction).word(spec.default)
        if spec.key in cv.build_args:
            ds.args[spec.key] = cv.build_args[spec.key]
        elif default is not None:
            ds.args[spec.key] = default
        elif spec.key in cv.global_args:
            ds.args[spec.key] = cv.global_args[spec.key]
        else:
            valued = False
        if valued:  # BuildKit adds it to the stage's environment, over an earlier ENV
            ds.arg_over_env.add(spec.key)
        if spec.key not in ds.declared:
            ds.declared.append(spec.key)
        shown.append(spec.key if default is None else f"{spec.key}={default}")
    cv.history(ds, "ARG " + " ".join(shown), True)


def _env(cv: StageConverter, ds: StageState, instruction: ins.EnvInstruction, _: int) -> None:
    expander = cv.expander(ds, instruction)
    pairs = [(expander.word(p.key), expander.word(p.value)) for p in instruction.pairs]
    for key, value in pairs:
        set_env(ds.config, key, value)
        ds.state = ds.state.env(key, value)
        ds.arg_over_env.discard(key)
    cv.history(ds, " ".join(["ENV"] + [f"{k}={v}" for k, v in pairs]), True)


def _label(cv: StageConverter, ds: StageState, instruction: ins.LabelInstruction, _: int) -> None:
    expander = cv.expander(ds, instruction)
    labels = dict(ds.config.get("Labels") or {})
    pairs = [(expander.word(p.key), expander.word(p.value)) for p in instruction.pairs]
    labels.update(pairs)
    ds.config["Labels"] = labels
    cv.history(ds, " ".join(["LABEL"] + [f"{k}={v}" for k, v in pairs]), True)


def _maintainer(cv: StageConverter, ds: StageState,
                instruction: ins.MaintainerInstruction, _: int) -> None:
    ds.image["author"] = instruction.maintainer
    cv.history(ds, f"MAINTAINER {instruction.maintainer}", True)


def _expose(cv: StageConverter, ds: StageState, instruction: ins.ExposeInstruction, _: int) -> None:
    expander = cv.expander(ds, instruction)
    ports = dict(ds.config.get("ExposedPorts") or {})
    added: dict[str, dict] = {}
    for word in instruction.ports:
        for port in expander.words(word):
            try:
                keys = expose_ports(port)
            except ValueError as err:
                raise located_error(f"EXPOSE {port}: {err}", instruction.location) from None
            for key in keys:
                ports[key] = {}
                added[key] = {}
    ds.config["ExposedPorts"] = ports
    cv.history(ds, "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(added)) + "]",
                  True)


def _volume(cv: StageConverter, ds: StageState, instruction: ins.VolumeInstruction, _: int) -> None:
    expander = cv.expander(ds, instruction)
    volumes = dict(ds.config.get("Volumes") or {})
    paths = [expander.word(v) for v in instruction.volumes]
    for path in paths:
        if not path:
            raise located_error("VOLUME specified can not be an empty string", instruction.location)
        volumes[path] = {}
    ds.config["Volumes"] = volumes
    cv.history(ds, "VOLUME [" + " ".join(paths) + "]", True)


def _stopsignal(cv: StageConverter, ds: StageState,
                instruction: ins.StopsignalInstruction, _: int) -> None:
    signal = cv.expander(ds, instruction).word(instruction.signal)
    try:
        parse_signal(signal)
    except ValueError as err:
        raise located_error(str(err), instruction.location) from None
    ds.config["StopSignal"] = signal
    cv.history(ds, f"STOPSIGNAL {signal}", True)


def _healthcheck(cv: StageConverter, ds: StageState,
                 instruction: ins.HealthcheckInstruction, _: int) -> None:
    check: dict[str, Any] = {"Test": list(instruction.test)}
    durations = [("Interval", instruction.interval), ("Timeout", instruction.timeout),
                 ("StartPeriod", instruction.start_period),
                 ("StartInterval", instruction.start_interval)]
    for field, value in [*durations, ("Retries", instruction.retries)]:
        if value:
            check[field] = value
    ds.config["Healthcheck"] = check
    shown = " ".join(f'"{go_duration(v)}"' for _, v in durations)
    cv.history(ds, f"HEALTHCHECK &{{{go_quote_list(check['Test'])} {shown} "
                      f"'\\x{instruction.retries:02x}'}}", True)


def _command(ds: StageState, command: tuple[str, ...], prepend_shell: bool) -> list[str]:
    # an empty shell form (``CMD`` alone) is BuildKit's ``sh -c ""``: its args joined by spaces
    return [*ds.shell, " ".join(command)] if prepend_shell else list(command)


def _cmd(cv: StageConverter, ds: StageState, instruction: ins.CmdInstruction, _: int) -> None:
    ds.config["Cmd"] = _command(ds, instruction.command, instruction.prepend_shell)
    ds.cmd_set = True
    cv.history(ds, f"CMD {go_quote_list(ds.config['Cmd'])}", True)


def _entrypoint(cv: StageConverter, ds: StageState,
                instruction: ins.EntrypointInstruction, _: int) -> None:
    ds.config["Entrypoint"] = _command(ds, instruction.command, instruction.prepend_shell)
    if not ds.cmd_set:
        ds.config.pop("Cmd", None)
    cv.history(ds, f"ENTRYPOINT {go_quote_list(ds.config['Entrypoint'])}", True)


def _shell(cv: StageConverter, ds: StageState, instruction: ins.ShellInstruction, _: int) -> None:
    ds.shell = list(instruction.shell)
    ds.config["Shell"] = list(instruction.shell)
    cv.history(ds, "SHELL [" + " ".join(ds.shell) + "]", True)


def _onbuild(cv: StageConverter, ds: StageState,
             instruction: ins.OnbuildInstruction, _: int) -> None:
    ds.config["OnBuild"] = [*(ds.config.get("OnBuild") or []), instruction.expression]


def _user(cv: StageConverter, ds: StageState, instruction: ins.UserInstruction, _: int) -> None:
    user = cv.expander(ds, instruction).word(instruction.user)
    ds.state = ds.state.user(user)
    ds.config["User"] = user
    cv.history(ds, f"USER {user}", True)


def _workdir(cv: StageConverter, ds: StageState,
             instruction: ins.WorkdirInstruction, _: int) -> None:
    path = cv.expander(ds, instruction).word(instruction.path)
    ds.state = ds.state.dir(path)
    workdir = ds.state.get_dir()
    ds.config["WorkingDir"] = workdir
    if workdir == "/":
        cv.history(ds, f"WORKDIR {workdir}", True)
        return
    user = ds.state.get_user()
    ds.state = ds.state.file(
        llb.mkdir(workdir, 0o755, make_parents=True, owner=user or None),
        **cv.op_opts(ds, instruction, cv.display(ds, instruction)),
    )
    cv.history(ds, f"WORKDIR {workdir}", False)


#: keyword → step
STEPS: dict[str, Step] = {
    "arg": _arg,
    "env": _env,
    "label": _label,
    "maintainer": _maintainer,
    "expose": _expose,
    "volume": _volume,
    "stopsignal": _stopsignal,
    "healthcheck": _healthcheck,
    "cmd": _cmd,
    "entrypoint": _entrypoint,
    "shell": _shell,
    "onbuild": _onbuild,
    "user": _user,
    "workdir": _workdir,
}
