"""Crafted hostile tar archives / image layers, generated at test time (nothing binary is
committed). ``corpus(canary)`` returns ``Case``s whose paths aim at the ``canary`` directory
outside the rootfs (absolute and ``..`` forms)."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass

MiB = 1 << 20


@dataclass
class Case:
    name: str
    data: bytes           # the archive as ADD / a layer sees it (maybe compressed)
    compression: str = "none"  # none | gzip | zstd (for the layer media type)
    bomb: bool = False    # expands far beyond its size


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = kw.pop("mode", 0o644 if kind != tarfile.DIRTYPE else 0o755)
    ti.mtime = 1_700_000_000
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    """entries: (TarInfo, bytes|None) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti, content in entries:
            if content is not None:
                ti.size = len(content)
                tar.addfile(ti, io.BytesIO(content))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def f(name, content=b"x\n", **kw):
    return _info(name, **kw), content


def d(name, **kw):
    return _info(name, tarfile.DIRTYPE, **kw), None


def sym(name, target):
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777), None


def hard(name, target):
    return _info(name, tarfile.LNKTYPE, linkname=target), None


def dev(name, kind, major=1, minor=3):
    return _info(name, kind, devmajor=major, devminor=minor, mode=0o666), None


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, 9, mtime=0)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(data)


def _zero_stream_tar(name: str, size: int, compress) -> bytes:
    """A tar holding ``size`` zero bytes, compressed streaming (never held in memory)."""
    out = io.BytesIO()
    if compress == "gzip":
        sink = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0)
    else:
        import zstandard

        sink = zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        ti = _info(name)
        ti.size = size

        class Zeros(io.RawIOBase):
            left = size

            def read(self, n=-1):
                n = min(self.left, MiB if n < 0 else n)
                self.left -= n
                return bytes(n)

        tar.addfile(ti, Zeros())
    sink.close()
    return out.getvalue()


def _gnu_sparse(name: str, realsize: int, tail: bytes = b"tail") -> bytes:
    """An old-GNU sparse file: ``realsize`` bytes of holes, one 512-byte chunk at the end."""
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.GNUTYPE_SPARSE
    ti.size = 512
    ti.mtime = 1_700_000_000
    buf = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    buf[386:398] = tarfile.itn(realsize - 512, 12, tarfile.GNU_FORMAT)
    buf[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)
    buf[482] = 0
    buf[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    buf[148:156] = b"        "
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf[:512]) + tail.ljust(512, b"\0") + bytes(1024)


def corpus(canary: str, bomb_size: int = 256 * MiB) -> list[Case]:
    """Every hostile case; ``canary`` is an absolute directory outside the rootfs."""
    c = canary.rstrip("/")
    up = "../" * 12 + c.lstrip("/")
    cases: list[Case] = []

    def add(name, entries, **kw):
        cases.append(Case(name, _tar(entries), **kw))

    add("dotdot-file", [f(f"{up}/dotdot")])
    add("dotdot-middle", [d("a"), f(f"a/../../../../{up}/middle")])
    add("dotdot-dir", [d(f"{up}/dir"), f(f"{up}/dir/x")])
    add("absolute-file", [f(f"{c}/absolute")])
    add("absolute-dir", [d(c + "/absdir"), f(c + "/absdir/x")])
    add("symlink-abs-then-write", [sym("esc", c), f("esc/through-abs")])
    add("symlink-rel-then-write", [sym("esc", up), f("esc/through-rel")])
    add("symlink-chain-then-write", [sym("a", "b"), sym("b", c), f("a/through-chain")])
    add("symlink-dir-then-dir", [sym("esc", c), d("esc/sub"), f("esc/sub/x")])
    add("symlink-to-file-then-overwrite", [sym("victim", c + "/victim"), f("victim", b"over")])
    add("symlink-parent-dotdot", [d("a"), sym("a/up", ".."), sym("a/up2", "up/../.."),
                                  f("a/up2/" + c.lstrip("/") + "/chain2")])
    add("symlink-loop", [sym("l1", "l2"), sym("l2", "l1"), f("l1/x")])
    add("hardlink-outside-abs", [hard("h", c + "/secret")])
    add("hardlink-outside-dotdot", [hard("h", up + "/secret")])
    add("hardlink-through-symlink", [sym("s", c), hard("h", "s/secret")])
    add("hardlink-to-symlink-outside", [sym("s", c + "/secret"), hard("h", "s")])
    add("hardlink-missing", [hard("h", "nope")])
    add("hardlink-to-dir", [d("dd"), hard("h", "dd")])
    add("whiteout-through-symlink", [sym("esc", c), f("esc/.wh.secret", b"")])
    add("whiteout-dotdot", [f(f"{up}/.wh.secret", b"")])
    add("opaque-through-symlink", [sym("esc", c), f("esc/.wh..wh..opq", b"")])
    add("opaque-whiteout", [d("o"), f("o/a"), f("o/.wh..wh..opq", b""), f("o/b")])
    add("whiteout-malformed", [f(".wh..", b""), f(".wh.", b"")])
    add("whiteout-root-opaque", [f(".wh..wh..opq", b""), f("kept")])
    add("device-char", [dev("null2", tarfile.CHRTYPE)])
    add("device-block", [dev("sda", tarfile.BLKTYPE, 8, 0)])
    add("fifo", [_info("p", tarfile.FIFOTYPE), None][:1] and [(_info("p", tarfile.FIFOTYPE), None)])
    add("setuid-setgid-sticky", [f("suid", mode=0o4755), f("sgid", mode=0o2755),
                                 d("sticky", mode=0o1777)])
    add("owner-huge-ids", [f("owned", uid=2**31 - 2, gid=2**31 - 2)])
    add("long-path", [f("/".join(["d" * 200] * 30) + "/deep")])
    add("long-name-component", [f("n" * 300)])
    add("duplicate-entries", [f("dup", b"one"), f("dup", b"two"), d("dup2"), f("dup2", b"f")])
    add("dir-replaced-by-file", [d("x"), f("x/inner"), f("x", b"now a file")])
    add("file-replaced-by-dir", [f("y"), d("y"), f("y/inner")])
    add("dir-replaced-by-symlink", [d("z"), f("z/in"), sym("z", c), f("z/after")])
    add("xattr-overlay", [(lambda ti: (ti.pax_headers.update({
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.security.capability": "\x01"}), (ti, b"x"))[1])(_info("xa"))])
    add("nul-in-name", [f("a\x00b")])
    add("empty-archive", [])
    add("root-entry-only", [d("."), d("/")])
    # raw-byte damage
    good = _tar([f("a", b"A" * 5000), f("b", b"B")])
    bad = bytearray(good)
    bad[148:156] = b"0000000\x00"  # the first header's checksum
    cases.append(Case("bad-checksum", bytes(bad)))
    cases.append(Case("truncated-header", good[:700]))
    cases.append(Case("truncated-data", good[:512 + 2000]))
    declared = bytearray(_tar([f("big", b"small")]))
    huge = tarfile.TarInfo("big")
    huge.size = 1 << 40
    huge.mtime = 1_700_000_000
    declared[:512] = huge.tobuf(tarfile.GNU_FORMAT)[:512]
    cases.append(Case("huge-declared-size", bytes(declared[:2048])))
    cases.append(Case("garbage-after-gzip-magic", b"\x1f\x8b\x08" + bytes(range(256)) * 4,
                      compression="gzip"))
    cases.append(Case("gzip-truncated", _gz(good)[:60], compression="gzip"))
    cases.append(Case("gzip-crc-bad", _gz(good)[:-8] + b"\0" * 8, compression="gzip"))
    cases.append(Case("zstd-truncated", _zstd(good)[:20], compression="zstd"))
    sparse = _info("sparse")
    sparse.type = tarfile.GNUTYPE_SPARSE
    cases.append(Case("gnu-sparse-bogus", _tar([(sparse, b"")], fmt=tarfile.GNU_FORMAT)))
    cases.append(Case("sparse-bomb", _gnu_sparse("sparse", 1 << 40), bomb=True))
    cases.append(Case("gzip-bomb", _zero_stream_tar("bomb", bomb_size, "gzip"),
                      compression="gzip", bomb=True))
    cases.append(Case("zstd-bomb", _zero_stream_tar("bomb", bomb_size, "zstd"),
                      compression="zstd", bomb=True))
    cases.append(Case("gzip-good", _gz(_tar([d("ok"), f("ok/file", b"fine")])),
                      compression="gzip"))
    return cases
