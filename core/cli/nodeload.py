"""How busy a builder's node is: the control API's ``Load`` (``control.proto``) asked of one
``pybkd`` over gRPC, with the node's TLS flags, as ``pybk build --builder`` would reach it.

The answer is the daemon's running ``pybk build`` commands and its other commands (from its
running records, whatever transport brought them), its version and platforms. For a builder
with ``least-loaded`` routing it is also the health check: a node that does not answer within
the timeout is skipped (:mod:`pybk.core.cli.builders`). Each query opens a connection of its
own (no connection is shared between queries), so what one query costs is what one ``pybk
build`` pays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pybk.core.model import Model
from pybk.core.remote.clientside import credentials
from pybk.core.remote.frames import LOAD_METHOD, decode, encode

#: how many nodes (in order of preference) the first round of least-loaded asks at once
FIRST = 2


class NodeLoad(Model, kw_only=True):
    """A node's answer to ``Load``."""

    #: ``pybk build`` commands running on the node now
    builds: int = 0
    #: its other running commands
    others: int = 0
    version: str = ""
    platforms: tuple[str, ...] = ()
    #: False: the node answers but has no ``Load`` (an older pybkd); its load is unknown
    known: bool = True


def query_load(endpoint: str, tls: dict[str, str], timeout: float
               ) -> tuple[str | None, NodeLoad | None]:
    """``(None, load)`` when the pybkd at ``endpoint`` (``tcp://HOST:PORT``) answers ``Load``
    within ``timeout`` seconds; ``(why not, None)`` otherwise."""
    return query_loads([(endpoint, tls)], timeout)[0]


def query_loads(nodes: Sequence[tuple[str, dict[str, str]]], timeout: float
                ) -> list[tuple[str | None, NodeLoad | None]]:
    """:func:`query_load` of each ``(endpoint, tls)``, all asked at once (gRPC's own threads
    wait for the answers; none of this process's)."""
    return _ask(nodes, timeout, lambda results: False)


def least_loaded(nodes: Sequence[tuple[str, dict[str, str]]], timeout: float
                 ) -> tuple[int | None, list[tuple[str | None, NodeLoad | None] | None]]:
    """``(index of the node with the fewest running builds, the answers)``, ``nodes`` given
    in order of preference: the first among equals wins, and a node that does not report
    its load comes after those that do. The first :data:`FIRST` nodes are asked at once: when
    the first runs no build it is the answer (no node can run fewer), else the second when it
    runs none; only when neither is certain are the others asked, at once. The answer is
    returned as soon as it is certain — when a node running no build has answered and every
    node before it has answered (or failed) — and the questions still open are cancelled
    (their answers are None). Two at once in the first round keep a busy first node from
    costing a second round of connections (bench/routing.py). The index is None when no
    node answered."""

    def settled(results: list[Any]) -> bool:
        for result in results:
            if result is None:
                return False
            reason, found = result
            if reason is None and found.known and found.builds == 0:
                return True
        return False

    results = _ask(nodes[:FIRST], timeout, settled)
    if nodes[FIRST:] and not settled(results):
        results += _ask(nodes[FIRST:], timeout, lambda rest: settled([*results, *rest]))
    results += [None] * (len(nodes) - len(results))
    best: tuple[tuple[float, int], int] | None = None
    for rank, result in enumerate(results):
        if result is None or result[0] is not None:
            continue
        found = result[1]
        weight = (float(found.builds) if found.known else float("inf"), rank)
        if best is None or weight < best[0]:
            best = (weight, rank)
    return (best[1] if best is not None else None), results


def _ask(nodes: Sequence[tuple[str, dict[str, str]]], timeout: float,
         enough: Callable[[list[Any]], bool]) -> list[Any]:
    """Ask each node ``Load`` at once; the answers (None for a question still open) once all
    have come or ``enough(answers)`` says so."""
    import threading

    import grpc

    results: list[Any] = [None] * len(nodes)
    changed = threading.Condition()
    channels = []

    def done(index: int, call: Any) -> None:
        answer = _answer(grpc, call)
        with changed:
            results[index] = answer
            changed.notify()

    try:
        for index, (endpoint, tls) in enumerate(nodes):
            try:
                creds, server_name = credentials(tls)
            except Exception as exc:  # noqa: BLE001 - an unreadable TLS file: unusable node
                results[index] = (str(exc), None)
                continue
            options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1),
                                              ("grpc.enable_retries", 0)]
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            target = endpoint[len("tcp://"):]
            channel = (grpc.secure_channel(target, creds, options=options)
                       if creds is not None else grpc.insecure_channel(target, options=options))
            channels.append(channel)
            call = channel.unary_unary(LOAD_METHOD).future(encode({"t": "load"}),
                                                           timeout=timeout)
            call.add_done_callback(lambda c, i=index: done(i, c))
        with changed:
            while not (all(r is not None for r in results) or enough(results)):
                changed.wait()
            return list(results)
    finally:
        for channel in channels:
            channel.close()


def _answer(grpc: Any, call: Any) -> tuple[str | None, NodeLoad | None]:
    try:
        header, _ = decode(call.result())
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return None, NodeLoad(known=False)
        return _reason(grpc, code, exc.details() if hasattr(exc, "details") else str(exc)), None
    except Exception as exc:  # noqa: BLE001 - a garbled answer
        return f"bad answer to Load: {exc}", None
    try:
        return None, NodeLoad(builds=int(header.get("builds", 0)),
                              others=int(header.get("others", 0)),
                              version=str(header.get("version", "")),
                              platforms=tuple(str(p) for p in header.get("platforms", ())))
    except (TypeError, ValueError, AttributeError) as exc:
        return f"bad answer to Load: {exc}", None


def _reason(grpc: Any, code: Any, details: str | None) -> str:
    """A short reason, as the TCP health check words it: ``Connection refused``, ``timed
    out``, ``TLS handshake failed`` …"""
    details = details or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    lowered = details.lower()
    for needle, said in (("connection refused", "Connection refused"),
                         ("timed out", "timed out"),
                         ("handshake", "TLS handshake failed"),
                         ("ssl", "TLS handshake failed"),
                         ("name or service not known", "Name or service not known"),
                         ("dns resolution failed", "Name or service not known"),
                         ("no route to host", "No route to host")):
        if needle in lowered:
            return said
    return details.rpartition(": ")[2] or (code.name if code is not None else "no answer")
