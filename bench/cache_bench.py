"""Remote cache transfer benchmark: export and import a ~200 MB cache through every backend.

The cache is ``--layers`` incompressible blobs (``--size`` MB in total) already in a local
content store, as they are after a build; *export* uploads them and writes the config,
*import* reads the config and fetches every blob into an empty content store (digests
verified). Services run on 127.0.0.1: a moto S3 server, Azurite, the GitHub Actions cache test
service (uploading to Azurite) and the Distribution registry, started by the script.

    python bench/cache_bench.py [--size 200] [--layers 8] [--reps 3] [--backends local,s3,…]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def make_plan(root: Path, size_mb: int, layers: int):
    from pybk.core.images.layers import LayerBlob
    from pybk.core.remotecache.config import ConfigBuilder
    from pybk.core.remotecache.store import ExportPlan
    from pybk.core.store.content import ContentStore

    content = ContentStore(root / "content")
    per = size_mb * (1 << 20) // layers
    blobs = []
    for i in range(layers):
        with content.writer() as w:
            left = per
            while left:
                chunk = os.urandom(min(left, 1 << 20))
                w.write(chunk)
                left -= len(chunk)
        blobs.append(LayerBlob(digest=w.current_digest, size=w.size,
                               diff_id="sha256:" + f"{i:064x}", compression="gzip"))
    builder = ConfigBuilder()
    top = builder.add_chain(blobs)
    builder.add_record("sha256:" + "ab" * 32, top)
    return ExportPlan(config=builder.build(), content=content,
                      info={"registry_hosts": {}}), content


def specs(name: str, services: dict, scratch: Path) -> tuple[dict, dict]:
    tag = uuid.uuid4().hex[:8]
    if name == "local":
        return {"dest": str(scratch / tag)}, {"src": str(scratch / tag)}
    if name == "s3":
        a = services["s3"].attrs(prefix=f"{tag}/")
        return a, a
    if name == "azblob":
        from support.azurite import ACCOUNT_KEY, ACCOUNT_NAME

        a = {"account_url": services["azurite"].blob_endpoint, "account_name": ACCOUNT_NAME,
             "secret_access_key": ACCOUNT_KEY, "container": f"c{tag}"}
        return a, a
    if name == "gha":
        gha = services["gha"]
        gha.reset()  # blob entries are shared by every scope: start empty
        a = {"url": gha.url, "token": gha.mint_token(), "scope": tag}
        return a, a
    a = {"ref": f"{services['registry'].host}/cache-{tag}:latest"}
    return a, a


def start_services(names: list[str], scratch: Path) -> tuple[dict, list]:
    services: dict = {}
    stops: list = []
    if "s3" in names:
        from support.cachefixtures import MotoS3

        services["s3"] = MotoS3().start()
        stops.append(services["s3"].stop)
    if "azblob" in names or "gha" in names:
        from support.azurite import AzuriteServer

        services["azurite"] = AzuriteServer().start()
        stops.append(services["azurite"].stop)
    if "gha" in names:
        from support.ghacache import GHACacheServer

        services["gha"] = GHACacheServer(services["azurite"]).start()
        stops.insert(0, services["gha"].stop)
    if "registry" in names:
        from support.registry import RegistryServer

        services["registry"] = RegistryServer(scratch / "registry").start()
        stops.append(services["registry"].stop)
    return services, stops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200, help="total MB (default 200)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backends", default="local,s3,azblob,gha,registry")
    args = parser.parse_args()
    names = [n for n in args.backends.split(",") if n]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log

    from pybk.core.engine.client import Client
    from pybk.core.engine.resolve import resolve
    from pybk.core.remotecache.store import load_cache
    from pybk.core.store.content import ContentStore

    with tempfile.TemporaryDirectory(prefix="pybk-cache-bench-") as tmp:
        scratch = Path(tmp)
        plan, _ = make_plan(scratch, args.size, args.layers)
        services, stops = start_services(names, scratch)
        client = Client(root=str(scratch / "store"))
        try:
            print(f"{args.size} MB in {args.layers} blobs, median of {args.reps}")
            print(f"{'backend':<10} {'export s':>9} {'MB/s':>7} {'re-export s':>12} "
                  f"{'import s':>9} {'MB/s':>7}")
            for name in names:
                exports, reexports, imports = [], [], []
                for _ in range(args.reps):
                    to, from_ = specs(name, services, scratch)
                    exporter = resolve("cache exporter", {"type": name, **to},
                                       where="--cache-to", pm=client.plugins)
                    importer = resolve("cache importer", {"type": name, **from_},
                                       where="--cache-from", pm=client.plugins)
                    t0 = time.perf_counter()
                    exporter.open(plan.info).export(plan)
                    t1 = time.perf_counter()
                    exporter.open(plan.info).export(plan)  # every blob is already there
                    t2 = time.perf_counter()
                    [loaded] = load_cache(importer, plan.info)
                    target = ContentStore(scratch / f"import-{uuid.uuid4().hex[:8]}")
                    for layer in loaded.config.layers:
                        loaded.store.fetch_blob(layer, target)
                    t3 = time.perf_counter()
                    exports.append(t1 - t0)
                    reexports.append(t2 - t1)
                    imports.append(t3 - t2)
                e, r, i = (statistics.median(x) for x in (exports, reexports, imports))
                print(f"{name:<10} {e:9.2f} {args.size / e:7.0f} {r:12.2f} {i:9.2f} "
                      f"{args.size / i:7.0f}", flush=True)
        finally:
            client.close()
            for stop in stops:
                stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
