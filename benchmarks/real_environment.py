"""A real environment's package set, for the warm package cache figures.

The 100 tiny packages of the other figures are the worst case for a package cache: a
cold create of them extracts almost nothing, so it is mostly the per-package linking
that a warm create repeats (py-rattler alone saves little on them, see its warm / cold
ratio in docs/benchmarks.md). What a cache saves is fetching and extracting real
packages, so the warm-cache figures that are judged use a real environment: the 30
linux-64 packages of pixi's own ``examples/flask-hello-world/pixi.lock`` (Python 3.11.4,
Flask 2.3.2 and their dependencies), rebuilt as local packages with the same names,
versions, dependencies and compressed sizes (42.8 MB in all).

How the copies differ from the real packages. Two ways make a warm create look worse: the
payload is random bytes cut into 4 KiB files (about 10,500 files, all hardlinked by a
warm create), where a real package holds fewer, larger files that extract to several
times their compressed size; and a local ``file://`` channel has no download, where a
real cold create downloads 42.8 MB. One way cuts the other: bzip2 decompresses random
bytes slowly (a good part of the cold create; the rate is in docs/benchmarks.md), where
conda-forge's ``.conda`` packages use zstd; that time stands in for the missing download,
which takes about as long at 20-50 MB/s.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from testkit.channel import PREFIX_PLACEHOLDER, PackageSpec, build_package, index_channel

ROOT_SPEC = "flask"
FILE_BYTES = 4096

# (name, version, size in bytes, dependencies), as the lock lists them for linux-64.
PACKAGES: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("_libgcc_mutex", "0.1", 2_562, ()),
    ("_openmp_mutex", "4.5", 23_621, ("libgomp", "_libgcc_mutex")),
    ("blinker", "1.6.2", 18_215, ("python",)),
    ("bzip2", "1.0.8", 495_686, ("libgcc-ng",)),
    ("ca-certificates", "2023.5.7", 148_360, ()),
    ("click", "8.1.4", 84_812, ("python",)),
    ("flask", "2.3.2", 79_865, ("blinker", "importlib-metadata", "itsdangerous", "python",
                                "click", "werkzeug", "jinja2")),
    ("importlib-metadata", "6.8.0", 25_910, ("python", "zipp")),
    ("itsdangerous", "2.1.2", 16_377, ("python",)),
    ("jinja2", "3.1.2", 101_443, ("python", "markupsafe")),
    ("ld_impl_linux-64", "2.40", 704_696, ()),
    ("libexpat", "2.5.0", 77_980, ("libgcc-ng",)),
    ("libffi", "3.4.2", 58_292, ("libgcc-ng",)),
    ("libgcc-ng", "13.1.0", 776_294, ("_libgcc_mutex", "_openmp_mutex")),
    ("libgomp", "13.1.0", 419_184, ("_libgcc_mutex",)),
    ("libnsl", "2.0.0", 31_236, ("libgcc-ng",)),
    ("libsqlite", "3.42.0", 828_910, ("libzlib", "libgcc-ng")),
    ("libuuid", "2.38.1", 33_601, ("libgcc-ng",)),
    ("libzlib", "1.2.13", 61_588, ("libgcc-ng",)),
    ("markupsafe", "2.1.3", 26_975, ("python", "libgcc-ng", "python_abi")),
    ("ncurses", "6.4", 880_967, ("libgcc-ng",)),
    ("openssl", "3.1.1", 2_642_411, ("ca-certificates", "libgcc-ng")),
    ("python", "3.11.4", 30_679_695, ("openssl", "readline", "libzlib", "libgcc-ng", "libnsl",
                                      "libexpat", "libsqlite", "libuuid", "xz", "ncurses",
                                      "ld_impl_linux-64", "tzdata", "libffi", "tk", "bzip2")),
    ("python_abi", "3.11", 5_682, ()),
    ("readline", "8.2", 281_456, ("ncurses", "libgcc-ng")),
    ("tk", "8.6.12", 3_456_292, ("libzlib", "libgcc-ng")),
    ("tzdata", "2023c", 117_580, ()),
    ("werkzeug", "2.3.6", 254_000, ("python", "markupsafe")),
    ("xz", "5.2.6", 418_368, ("libgcc-ng",)),
    ("zipp", "3.16.0", 17_482, ("python",)),
)  # fmt: skip


MEGABYTES = sum(size for _, _, size, _ in PACKAGES) / 1e6
DESCRIPTION = f"the flask environment ({len(PACKAGES)} packages, {MEGABYTES:.1f} MB)"


def package_specs() -> list[PackageSpec]:
    """Each package with its size in 4 KiB files of seeded random bytes, plus one text file
    carrying the prefix placeholder, which linking must copy and rewrite."""
    specs = []
    for name, version, size, depends in PACKAGES:
        rng = random.Random(name)
        chunks = range(math.ceil(size / FILE_BYTES))
        files = {
            f"lib/{name}/{n:05d}.bin": rng.randbytes(min(FILE_BYTES, size - n * FILE_BYTES))
            for n in chunks
        }
        prefix_files = {f"etc/{name}/prefix.conf": f"prefix={PREFIX_PLACEHOLDER}\n"}
        specs.append(PackageSpec(name, version, depends=depends, files=files,
                                 prefix_files=prefix_files))  # fmt: skip
    return specs


def add_to_channel(channel_dir: Path) -> str:
    """Writes the environment's packages into ``channel_dir`` beside what it holds, indexes
    it again and returns its URL. Building takes a few seconds, so nothing is cached."""
    for spec in package_specs():
        build_package(channel_dir / "noarch", spec)
    return index_channel(channel_dir)
