#!/usr/bin/env python3
"""Writes OCI image layers and image archives with the standard library only.

    oci.py layer ROOTFS OUT.tar            one uncompressed layer of a directory tree; prints its
                                           digest and keeps it in OUT.tar.sha256
    oci.py archive NAME CONFIG.json LAYER.tar... [--out FILE|-] [--omit DIGEST]...
                                           an OCI image layout archive that `ctr images import`
                                           reads; prints the manifest digest (the image's digest
                                           in containerd). Without --out it only prints the digest.
                                           --omit leaves that layer's blob out (the manifest still
                                           names it): for a store that holds it already.

Layers are uncompressed: importing skips a gzip pass, and the base layer is built once and cached.
Entries are sorted and their times clamped, so the same tree gives the same digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

EPOCH = 0  # every entry's mtime: the digest depends on content only
CHUNK = 1 << 20


def walk_sorted(root: Path) -> Iterator[Path]:
    """Every path under root, parents first, siblings in byte order, without following links."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(dirpath) / name


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = EPOCH
    info.uname = info.gname = ""
    return info


def write_layer(rootfs: Path, out: Path) -> str:
    tmp = out.with_suffix(".tmp")
    with (
        tmp.open("wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in walk_sorted(rootfs):
            tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False, filter=normalized)
    digest = "sha256:" + file_sha256(tmp)
    tmp.rename(out)
    Path(f"{out}.sha256").write_text(digest + "\n")
    return digest


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def layer_digest(path: Path) -> str:
    cached = Path(f"{path}.sha256")
    if cached.exists():
        return cached.read_text().strip()
    return "sha256:" + file_sha256(path)


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


class Image:
    """The JSON documents of one single-platform image, given its layers."""

    def __init__(self, name: str, config: dict[str, Any], layers: list[Path]) -> None:
        self.name = name
        self.layers = layers
        self.layer_digests = [layer_digest(p) for p in layers]
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": self.layer_digests},
        }
        self.config_digest, self.config_bytes = blob(canonical(image_config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": self.descriptor(
                "application/vnd.oci.image.config.v1+json",
                self.config_digest,
                len(self.config_bytes),
            ),
            "layers": [
                self.descriptor("application/vnd.oci.image.layer.v1.tar", d, p.stat().st_size)
                for d, p in zip(self.layer_digests, layers, strict=True)
            ],
        }
        self.manifest_digest, self.manifest_bytes = blob(canonical(manifest))

    @staticmethod
    def descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": digest, "size": size}

    def index(self) -> bytes:
        entry = self.descriptor(
            "application/vnd.oci.image.manifest.v1+json",
            self.manifest_digest,
            len(self.manifest_bytes),
        )
        entry["platform"] = {"architecture": "amd64", "os": "linux"}
        entry["annotations"] = {
            "io.containerd.image.name": self.name,
            "org.opencontainers.image.ref.name": self.name,
        }
        return canonical({"schemaVersion": 2, "manifests": [entry]})

    def write_archive(self, out: BinaryIO, omit: frozenset[str] = frozenset()) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            for digest, path in zip(self.layer_digests, self.layers, strict=True):
                if digest not in omit:
                    tar.add(path, arcname=blob_path(digest), filter=normalized)
            add_bytes(tar, blob_path(self.config_digest), self.config_bytes)
            add_bytes(tar, blob_path(self.manifest_digest), self.manifest_bytes)
            add_bytes(tar, "index.json", self.index())


def blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/")


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = normalized(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of the first ``name VALUE`` in argv, and argv without the two."""
    if name not in argv:
        return None, argv
    at = argv.index(name)
    return argv[at + 1], argv[:at] + argv[at + 2 :]


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "layer":
        print(write_layer(Path(argv[1]), Path(argv[2])))
        return 0
    if len(argv) >= 4 and argv[0] == "archive":
        out, argv = option(argv, "--out")
        omitted: list[str] = []
        while "--omit" in argv:
            digest, argv = option(argv, "--omit")
            omitted.append(str(digest))
        config = json.loads(Path(argv[2]).read_text())
        image = Image(argv[1], config, [Path(p) for p in argv[3:]])
        if out == "-":
            image.write_archive(sys.stdout.buffer, frozenset(omitted))
        elif out:
            with open(out, "wb") as f:
                image.write_archive(f, frozenset(omitted))
        print(image.manifest_digest, file=sys.stderr if out == "-" else sys.stdout)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
