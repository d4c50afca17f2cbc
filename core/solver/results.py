"""What a solve produces: references to committed snapshots and the build's summary."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pybk.core.errors import SolveError
from pybk.core.interfaces import BuildResultView
from pybk.core.model import Model, field

if TYPE_CHECKING:
    from pybk.core.store.store import Store


class Ref(Model):
    """A vertex output: a committed store record (``None`` is an empty filesystem).

    ``snapshot`` is the record id, which is also its snapshot key in the store's snapshotter.

    ``path`` is set for results that are plain directories (a synced local context): those are
    read in place instead of through the snapshotter.
    """

    snapshot: str | None = None
    path: str | None = None

    @property
    def is_scratch(self) -> bool:
        return self.snapshot is None and self.path is None


SCRATCH_REF = Ref()


@contextlib.contextmanager
def read_ref(store: Any, ref: Ref) -> Iterator[str]:
    """A read-only directory with ``ref``'s filesystem while the context is open."""
    if ref.path is not None:
        yield ref.path
        return
    if ref.snapshot is None or store is None:
        import tempfile

        empty = tempfile.mkdtemp(prefix="pybk-scratch-")
        try:
            yield empty
        finally:
            shutil.rmtree(empty, ignore_errors=True)
        return
    record = store.get_record(ref.snapshot)
    if record is None:
        raise SolveError(f"result {ref.snapshot} is no longer in the store")
    with store.contents(record) as path:
        yield path


class VertexStats(Model):
    """How many vertices ran and how many came from the cache."""

    executed: int = 0
    cached: int = 0
    executed_digests: tuple[str, ...] = ()
    cached_digests: tuple[str, ...] = ()


class SolveResult(BuildResultView, Model, eq=False):
    """The result of :meth:`pybk.core.engine.client.Client.solve`.

    ``ref`` is the result's snapshot; ``mount()`` (for exporters) yields a read-only directory
    with its filesystem while the context is open.
    """

    ref: Ref
    store: Store | None = field(repr=False)
    image_config: Mapping[str, Any] | None = None
    stats: VertexStats = VertexStats()
    cache_key: str = ""
    #: the output of the head vertex that ``ref`` is (its cache record is ``cache_key``'s)
    cache_output: int = 0
    #: the solved :class:`~pybk.core.llb.definition.Definition` (None for an empty one)
    definition: Any = field(default=None, repr=False)
    #: ``{vertex digest: manifest digest}`` of the images this solve resolved
    resolved: Mapping[str, str] = field(factory=dict, repr=False)
    metadata: Mapping[str, Any] = field(factory=dict)

    @property
    def snapshot(self) -> str | None:
        return self.ref.snapshot

    @contextlib.contextmanager
    def mount(self) -> Iterator[str]:
        with read_ref(self.store, self.ref) as path:
            yield path
