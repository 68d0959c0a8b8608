"""Hand-built local conda channels for tests and benchmarks.

No conda-build exists here, so packages are written directly as ``noarch: generic``
``.tar.bz2`` archives (the layout in ``info/`` is the minimum rattler needs to index,
solve and link them) and indexed with ``rattler.index.index_fs``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# conda's standard placeholder: long enough for any real prefix to be patched over it.
PREFIX_PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"
# A fixed build time (ms) keeps archives, and therefore their hashes, reproducible.
TIMESTAMP_MS = 1_700_000_000_000
BIG_PAYLOAD_BYTES = 80 * 1024 * 1024
# os._exit skips interpreter teardown, where rattler's runtime threads crash (SIGSEGV or
# SIGABRT) in about one run in five.
_INDEX_SCRIPT = (
    "import asyncio, os, sys\n"
    "from rattler.index import index_fs\n"
    "asyncio.run(index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True))\n"
    "os._exit(0)\n"
)


@dataclass(frozen=True)
class PackageSpec:
    """One package to write: payload files, prefix-patched text files, optional bulk;
    ``noarch: generic`` unless it is built for one platform's ``subdir``."""

    name: str
    version: str
    build_number: int = 0
    depends: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    prefix_files: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    subdir: str = "noarch"

    @property
    def build(self) -> str:
        return f"h0_{self.build_number}"

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"


def _payload(spec: PackageSpec) -> dict[str, tuple[bytes, bool]]:
    """Every payload path with its bytes and whether it embeds the prefix placeholder."""
    payload = {path: (data, False) for path, data in spec.files.items()}
    payload.update({p: (text.encode(), True) for p, text in spec.prefix_files.items()})
    if spec.size_bytes:
        # Seeded random bytes: incompressible (so linking costs real I/O) yet reproducible.
        blob = random.Random(spec.file_name).randbytes(spec.size_bytes)
        payload[f"share/{spec.name}/payload.bin"] = (blob, False)
    return payload


def _paths_entry(path: str, data: bytes, has_prefix: bool) -> dict[str, object]:
    entry: dict[str, object] = {
        "_path": path,
        "path_type": "hardlink",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_in_bytes": len(data),
    }
    if has_prefix:
        entry.update(file_mode="text", prefix_placeholder=PREFIX_PLACEHOLDER)
    return entry


def _info_files(spec: PackageSpec, payload: dict[str, tuple[bytes, bool]]) -> dict[str, bytes]:
    index = {
        "name": spec.name,
        "version": spec.version,
        "build": spec.build,
        "build_number": spec.build_number,
        "depends": list(spec.depends),
        "license": "BSD-3-Clause",
        "subdir": spec.subdir,
        "timestamp": TIMESTAMP_MS,
    }
    if spec.subdir == "noarch":
        index["noarch"] = "generic"
    paths = [_paths_entry(p, data, pre) for p, (data, pre) in sorted(payload.items())]
    return {
        "info/index.json": json.dumps(index, indent=2).encode(),
        "info/files": "".join(f"{p}\n" for p in sorted(payload)).encode(),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2).encode(),
    }


def _add_member(tar: tarfile.TarFile, path: str, data: bytes) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mtime = TIMESTAMP_MS // 1000
    info.mode = 0o755 if path.startswith("bin/") else 0o644
    tar.addfile(info, io.BytesIO(data))


def build_package(out_dir: Path, spec: PackageSpec) -> Path:
    """Write ``spec`` as ``out_dir/<name>-<version>-<build>.tar.bz2`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = _payload(spec)
    target = out_dir / spec.file_name
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # Level 1: the payload is incompressible anyway, and level 9 makes acme-big slow to build.
    with tarfile.open(tmp, "w:bz2", compresslevel=1) as tar:
        for path, data in _info_files(spec, payload).items():
            _add_member(tar, path, data)
        for path, (data, _) in sorted(payload.items()):
            _add_member(tar, path, data)
    tmp.replace(target)
    return target


def index_channel(channel_dir: Path) -> str:
    """Index ``channel_dir`` and return its ``file://`` URL.

    Runs in a subprocess so that rattler's native runtime never lives in the caller.
    """
    cmd = [sys.executable, "-c", _INDEX_SCRIPT, str(channel_dir)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return channel_dir.resolve().as_uri()


def build_channel(channel_dir: Path, packages: Iterable[PackageSpec]) -> str:
    """Write ``packages`` to ``channel_dir/<subdir>/``, index it and return its URL."""
    for spec in packages:
        build_package(channel_dir / spec.subdir, spec)
    return index_channel(channel_dir)


def _builder_hash() -> str:
    """Changes whenever this module changes, invalidating cached archives."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def cached_package(cache_dir: Path, spec: PackageSpec) -> Path:
    """Build ``spec`` once under ``cache_dir``; later calls reuse the archive.

    Archives of earlier versions of this module are deleted: each acme-big is 80 MB.
    """
    out_dir = cache_dir / _builder_hash()
    target = out_dir / spec.file_name
    if target.is_file():
        return target
    for stale in cache_dir.glob("*"):
        if stale != out_dir:
            shutil.rmtree(stale, ignore_errors=True)
    return build_package(out_dir, spec)


def _link_or_copy(source: Path, target_dir: Path) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / source.name
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


ACME_TOOL_SCRIPT = f"#!/bin/sh\n# installed in {PREFIX_PLACEHOLDER}\necho {PREFIX_PLACEHOLDER}\n"
ACME_BIG = PackageSpec("acme-big", "1.0", size_bytes=BIG_PAYLOAD_BYTES)


def standard_packages() -> list[PackageSpec]:
    """The small packages of the fixture channel (everything except ``acme-big``)."""
    return [
        PackageSpec("acme-core", "1.0", files={"share/acme-core/VERSION": b"1.0\n"}),
        PackageSpec("acme-core", "1.1", files={"share/acme-core/VERSION": b"1.1\n"}),
        PackageSpec("acme-core", "2.0", files={"share/acme-core/VERSION": b"2.0\n"}),
        PackageSpec(
            "acme-utils",
            "1.0",
            depends=("acme-core >=1.0,<2",),
            files={"share/acme-utils/README": b"utils\n"},
        ),
        PackageSpec(
            "acme-extras",
            "1.0",
            depends=("acme-utils",),
            files={"share/acme-extras/README": b"extras\n"},
        ),
        PackageSpec("acme-tool", "1.0", prefix_files={"bin/acme-tool": ACME_TOOL_SCRIPT}),
        PackageSpec("acme-broken", "1.0", depends=("does-not-exist",)),
        *native_packages(),
    ]


def native_packages() -> list[PackageSpec]:
    """Packages built per platform: ``acme-native`` for linux-64 (needing glibc) and for
    osx-arm64 (needing macOS 11), ``acme-linux-only`` for linux-64 alone."""
    native = {"share/acme-native/README": b"native\n"}
    return [
        PackageSpec(
            "acme-native", "1.0", depends=("__glibc >=2.17",), files=native, subdir="linux-64"
        ),
        PackageSpec(
            "acme-native", "1.0", depends=("__osx >=11",), files=native, subdir="osx-arm64"
        ),
        PackageSpec("acme-linux-only", "1.0", subdir="linux-64"),
    ]


def standard_channel(channel_dir: Path, big_cache_dir: Path | None = None) -> str:
    """The fixture channel: acme-core 1.0/1.1/2.0, acme-utils, acme-extras, acme-tool,
    acme-big (~80 MB, slow to link), acme-broken (unsolvable) and the per-platform
    ``native_packages``. Returns its URL.

    ``acme-big`` takes seconds to build, so it is built once under ``big_cache_dir``
    (keyed by this module's content hash) and hard-linked into the channel.
    """
    for spec in standard_packages():
        build_package(channel_dir / spec.subdir, spec)
    if big_cache_dir is None:
        build_package(channel_dir / "noarch", ACME_BIG)
    else:
        _link_or_copy(cached_package(big_cache_dir, ACME_BIG), channel_dir / "noarch")
    return index_channel(channel_dir)


def chain_packages(count: int) -> list[PackageSpec]:
    """``pkg-000`` … : each depends on its predecessor and on the one ten places back."""
    specs = []
    for i in range(count):
        depends = tuple(f"pkg-{j:03d} >=1.0" for j in sorted({i - 10, i - 1}) if j >= 0)
        files = {f"share/pkg-{i:03d}/data.txt": f"package {i}\n".encode()}
        specs.append(PackageSpec(f"pkg-{i:03d}", "1.0", depends=depends, files=files))
    return specs


def many_packages_channel(channel_dir: Path, count: int = 100) -> tuple[str, list[str]]:
    """A channel of ``count`` small inter-dependent packages, for benchmarks.

    Returns the channel URL and the match specs that install all of them.
    """
    packages = chain_packages(count)
    url = build_channel(channel_dir, packages)
    return url, [spec.name for spec in packages]


# ``served_slowly`` sends package archives in chunks of this size with this pause between
# them: about 2 MB/s.
SLOW_CHUNK = 64 * 1024
SLOW_PAUSE = 0.03


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        slow = self.path.endswith((".tar.bz2", ".conda"))
        while chunk := source.read(SLOW_CHUNK):
            outputfile.write(chunk)
            if slow:
                time.sleep(SLOW_PAUSE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def served_slowly(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on loopback (the URL ends with ``/``), package archives at
    about 2 MB/s: rattler reports download progress only for what it downloads (a
    ``file://`` package counts as a whole once extracted), and a download this slow
    lasts long enough for a test to watch the job."""
    handler = functools.partial(_SlowHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
