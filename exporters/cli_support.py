"""``pybk images ls|rm|tag|inspect``: the local image store from the command line."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from pybk.core.errors import UsageError


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _created(config: dict) -> str:
    text = config.get("created")
    if not text:
        return ""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00")[:19] + "+00:00")
    except ValueError:
        return text
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pybk images", description="Manage the local image store.")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list images")
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--digests", action="store_true", help="show full manifest digests")
    rm = sub.add_parser("rm", help="remove image names (blobs stay in the content store)")
    rm.add_argument("names", nargs="+")
    tag = sub.add_parser("tag", help="add a name to an image")
    tag.add_argument("source")
    tag.add_argument("target")
    inspect = sub.add_parser("inspect", help="manifest and config of an image as JSON")
    inspect.add_argument("names", nargs="+")
    return parser


def images_command(argv: list[str], root: str) -> int:
    """Run ``pybk images ARGV`` on the store at ``root``; returns the exit code.

    Unknown images are reported on stderr (exit 1); malformed arguments raise UsageError.
    """
    from pybk.core.errors import StoreError
    from pybk.core.images import store as imagestore

    args = _parser().parse_args(argv)
    out = sys.stdout
    if args.command == "ls":
        images = imagestore.list_images(root)
        if args.quiet:
            for image in images:
                print(image.name, file=out)
            return 0
        rows = [("NAME", "DIGEST", "CREATED", "SIZE")]
        for image in images:
            try:
                details = imagestore.inspect(root, image.name)
                created, size = _created(details["config"]), _size(details["size"])
            except (StoreError, OSError, ValueError, KeyError):
                created, size = "", "?"
            digest = image.digest if args.digests else image.digest[7:19]
            rows.append((image.name, digest, created, size))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False))
                  + "  " + row[3], file=out)
        return 0
    if args.command == "tag":
        try:
            tagged = imagestore.tag(root, args.source, args.target)
        except StoreError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
        print(tagged.name, file=out)
        return 0
    status = 0
    if args.command == "rm":
        for name in args.names:
            found = imagestore.get(root, name)
            if found is not None and imagestore.remove(root, name):
                print(f"Untagged: {found.name}", file=out)
            else:
                print(f"ERROR: no such image: {name}", file=sys.stderr)
                status = 1
        return status
    results = []
    for name in args.names:
        try:
            results.append(imagestore.inspect(root, name))
        except StoreError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            status = 1
    print(json.dumps(results, indent=2), file=out)
    return status
