"""Multi-platform builds: one solve per target platform, exported together.

A frontend asked for several platforms answers with BuildKit's metadata keys
(``refs.platforms``, ``containerimage.config/<platform>``) plus ``definition/<platform>``;
:func:`platform_graphs` reads them back and :class:`MultiPlatformResult` carries the solved
results to the exporters. It behaves as the first platform's result, so an exporter that knows
nothing of platforms exports that one; ``image``/``oci``/``docker`` write an index and
``local``/``tar`` one subdirectory per platform.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from pybk.core.interfaces import BuildResultView
from pybk.core.model import Model, field


class MultiPlatformResult(BuildResultView, Model, eq=False):
    """``results``: ``{platform: SolveResult}`` in the requested order."""

    results: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(factory=dict)

    @property
    def first(self) -> Any:
        return next(iter(self.results.values()))

    @property
    def image_config(self) -> Mapping[str, Any] | None:  # type: ignore[override]
        return self.first.image_config

    @property
    def store(self) -> Any:
        return self.first.store

    @property
    def ref(self) -> Any:
        return self.first.ref

    @property
    def snapshot(self) -> str | None:
        return self.first.snapshot

    @property
    def cache_key(self) -> str:
        return self.first.cache_key

    @contextlib.contextmanager
    def mount(self) -> Iterator[str]:
        with self.first.mount() as path:
            yield path

    def platform_results(self) -> Mapping[str, Any]:
        return self.results


def platform_graphs(metadata: Mapping[str, bytes]) -> dict[str, tuple[Any, Any]] | None:
    """``{platform: (definition, image config)}`` from a frontend result's metadata, or None
    when the frontend built a single platform."""
    from pybk.core.llb.definition import Definition

    listed = metadata.get("refs.platforms")
    if not listed:
        return None
    graphs: dict[str, tuple[Any, Any]] = {}
    for platform in json.loads(bytes(listed)):
        definition = Definition.from_bytes(bytes(metadata[f"definition/{platform}"]))
        config = json.loads(bytes(metadata.get(f"containerimage.config/{platform}", b"null")))
        graphs[platform] = (definition, config or None)
    return graphs
