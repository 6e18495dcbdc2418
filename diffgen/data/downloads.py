"""The published data archives, fetched only on request (`diffgen data get`), verified and unpacked.

`ITEMS` holds one `Item` per name `diffgen data get NAME` knows: the folder it fills under the data folder, its
published files (addresses and published checksums) and how they are unpacked. `get(item, data_dir)`:

1. does nothing when data_dir/<folder> verifies: it holds the manifest (`diffgen-manifest.json`) written when it was
   unpacked, and every file listed there still has its recorded sha256;
2. downloads each file to data_dir/.downloads/<item>/<file>.part from the mirrors (<mirror>/<item>/<file>), then the
   published addresses, resuming a partial file with an HTTP Range request; a response that is an HTML page is
   refused, a transfer cut short keeps its partial file for the next run;
3. checks the finished file against its published checksum (a mismatch deletes it);
4. unpacks into a temporary folder beside the destination (a tar member may only be a regular file or a folder inside
   the archive's one top folder), writes the manifest there and renames the folder into place.

So a loader never sees a partial or unverified file: until the rename, data_dir/<folder> is absent (or the previous,
complete folder). The chain of trust: published checksum -> downloaded archive -> sha256 of each unpacked file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence, TextIO

from filelock import FileLock

MANIFEST = "diffgen-manifest.json"  # in each unpacked folder: the sha256 of every file, written at unpack time
DOWNLOADS = ".downloads"  # under the data folder: partial and verified downloads until they are unpacked
LOCK = ".diffgen-data.lock"  # under the data folder: one `data get` at a time writes there
MIRRORS = "DIFFGEN_MIRRORS"  # whitespace-separated mirror base URLs, tried before the published addresses
TIMEOUT = 60  # seconds without a byte before a connection counts as dropped
CHUNK = 1 << 16


class DownloadError(Exception):
    """A file that could not be fetched, verified or unpacked; the message names it, each address tried and why."""


@dataclass(frozen=True)
class Remote:
    """One published file: its name, the addresses that publish it and its published checksum."""

    name: str  # file name, also its name under a mirror: <mirror>/<item>/<name>
    urls: tuple[str, ...]  # published addresses, tried in this order after any mirrors
    checksum: str  # the published hex digest
    algorithm: str = "md5"  # the hashlib name of `checksum`


@dataclass(frozen=True)
class Item:
    """What `diffgen data get NAME` fetches: files unpacked into data_dir/<folder> (the folder a loader reads)."""

    name: str  # the command's NAME
    folder: str  # under the data folder
    files: tuple[Remote, ...]
    unpack: Callable[[Path, Path], None]  # (verified download, staging folder that becomes `folder`)
    source: str  # the page that publishes the files


def keep(download: Path, staging: Path) -> None:
    """The file as published (gzipped idx files are read as they are)."""
    shutil.copyfile(download, staging / download.name)


def untar(archive: Path, staging: Path) -> None:
    """A tar archive (gzip, bz2 or xz) whose members lie in one top folder, unpacked without that folder (as tar
    --strip-components=1 does). Every member is checked before anything is written: only regular files and folders,
    relative paths without '..'; links, devices and absolute paths are refused."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            paths = [PurePosixPath(m.name) for m in members]
            for m, path in zip(members, paths):
                why = ("an absolute path" if path.is_absolute() else "a path with '..'" if ".." in path.parts else
                       None if m.isfile() or m.isdir() else f"a link to {m.linkname!r}" if m.issym() or m.islnk()
                       else "not a regular file or folder")
                if why:
                    raise DownloadError(f"{archive.name}: member {m.name!r} is {why}: refused, nothing was unpacked")
            tops = {path.parts[0] for path in paths if path.parts}
            if len(tops) != 1 or any(m.isfile() and len(path.parts) == 1 for m, path in zip(members, paths)):
                raise DownloadError(f"{archive.name}: expected one top folder holding every member; found "
                                    f"{', '.join(sorted(tops)) or 'no members'}")
            for m, path in zip(members, paths):
                target = staging.joinpath(*path.parts[1:])
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "xb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DownloadError(f"{archive.name} could not be unpacked: not a complete tar archive? "
                            f"({type(e).__name__}: {e})") from e


def _idx_files(base_urls: Sequence[str], md5s: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(Remote(name, tuple(base + name for base in base_urls), md5) for name, md5 in md5s.items())


ITEMS = {item.name: item for item in [
    # Addresses and MD5s as torchvision lists them (torchvision/datasets/mnist.py, MNIST.mirrors and .resources).
    Item("mnist", "mnist", _idx_files(
        ["http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"],
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
         keep, "https://yann.lecun.com/exdb/mnist/"),
    # Addresses and MD5s from the "Get the Data" table of Fashion-MNIST's README (github.com/zalandoresearch/
    # fashion-mnist); the same README says the files are also in the repository under data/fashion.
    Item("fashion-mnist", "fashion-mnist", _idx_files(
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
         keep, "https://github.com/zalandoresearch/fashion-mnist#get-the-data"),
    # The binary version; its MD5 is the one the CIFAR-10 page publishes ("CIFAR-10 binary version (suitable for C
    # programs)", https://www.cs.toronto.edu/~kriz/cifar.html). It unpacks to cifar-10-batches-bin/.
    Item("cifar10", "cifar-10-batches-bin", (
        Remote("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
               "c32a1d4ab5d03f1284b67883e8d87530"),),
         untar, "https://www.cs.toronto.edu/~kriz/cifar.html"),
    # The FID Inception-v3 weights (the TF graph of 2015-12-05 as torch-fidelity converts it; the same bytes as
    # pytorch-fid's pt_inception-2015-12-05-6726825d.pth): the address is torch-fidelity 0.4.0's URL_INCEPTION_V3,
    # the file name carries the sha256 prefix torch.hub checks, the full sha256 as genforce/resefa lists it.
    Item("inception", "inception", (
        Remote("weights-inception-2015-12-05-6726825d.pth",
               ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                "weights-inception-2015-12-05-6726825d.pth",),
               "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", "sha256"),),
         keep, "https://github.com/toshas/torch-fidelity"),
]}


# ---------------------------------------------------------------------------------------------------------------
# Verifying


def digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify(folder: Path) -> str | None:
    """None when `folder` holds its manifest and every file listed there has its recorded sha256; else what is
    wrong, in words."""
    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    try:
        recorded = json.loads((folder / MANIFEST).read_text())["sha256"]
    except FileNotFoundError:
        return f"no {MANIFEST}: not written by diffgen data get"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(recorded, dict):
        return f"{MANIFEST} is unreadable (its sha256 entry is not a table of files)"
    for name, sha in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if digest(path, "sha256") != sha:
            return f"{name} changed since it was unpacked (its sha256 differs from the manifest's)"
    return None


def _write_manifest(staging: Path, item: Item) -> None:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest = {"item": item.name, "source": item.source,
                "downloads": [{"name": r.name, r.algorithm: r.checksum} for r in item.files],
                "sha256": {p.relative_to(staging).as_posix(): digest(p, "sha256") for p in files}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Fetching


class _Refused(Exception):
    """One address did not serve the file (the next one is tried)."""


def mirrors_from_env() -> list[str]:
    """The mirror base URLs of $DIFFGEN_MIRRORS (separated by whitespace)."""
    return os.environ.get(MIRRORS, "").split()


def addresses(item: Item, remote: Remote, mirrors: Sequence[str] = ()) -> list[str]:
    """Where `remote` is looked for, in order: <mirror>/<item>/<file> for each mirror, then its published URLs."""
    return [f"{m.rstrip('/')}/{item.name}/{remote.name}" for m in mirrors] + list(remote.urls)


def get(item: Item, data_dir: str | os.PathLike, *, mirrors: Sequence[str] = (), out: TextIO | None = None) -> bool:
    """Make data_dir/<item.folder> hold item's files, verified (see the module docstring). True when it fetched
    them, False when they were there and verified. Progress goes to `out` (None: silent)."""
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    dest = data_dir / item.folder
    with FileLock(data_dir / LOCK):
        problem = verify(dest)
        if problem is None:
            _say(out, f"{item.name}: {dest} is there and verified; nothing to do")
            return False
        if dest.exists() and not (dest / MANIFEST).is_file():
            raise DownloadError(f"{item.name}: {dest} exists and was not written by diffgen data get (it has no "
                                f"{MANIFEST}); it is left as it is: move it aside to fetch {item.name} there")
        if dest.exists():
            _say(out, f"{item.name}: {dest} does not verify ({problem}): fetching it again")
        downloads = data_dir / DOWNLOADS / item.name
        downloads.mkdir(parents=True, exist_ok=True)
        _say(out, f"{item.name} -> {dest}")
        try:
            files = [_fetch(r, addresses(item, r, mirrors), downloads, out) for r in item.files]
            _install(item, files, dest)
            shutil.rmtree(downloads)
        finally:  # partial and verified downloads stay for the next run; empty folders go
            for folder in (downloads, downloads.parent):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    _say(out, f"{item.name}: {len(files)} file(s) verified, unpacked into {dest} ({MANIFEST} written)")
    return True


def _fetch(remote: Remote, urls: Sequence[str], downloads: Path, out: TextIO | None) -> Path:
    """downloads/<name>, its digest equal to the published checksum: kept from an earlier run, or fetched from the
    first address that serves it (into downloads/<name>.part, resumed when that is there)."""
    done, part = downloads / remote.name, downloads / f"{remote.name}.part"
    if done.is_file() and digest(done, remote.algorithm) == remote.checksum:
        return done
    failures = []
    for url in urls:
        try:
            start, took = _download(url, part, remote.name, out)
        except _Refused as e:
            failures.append(f"{url}: {e}")
            continue
        got = digest(part, remote.algorithm)
        if got != remote.checksum:
            html = _looks_like_html(part)
            part.unlink()
            failures.append(f"{url}: {remote.algorithm} {got} is not the published {remote.checksum}"
                            f"{' (the server sent an HTML page)' if html else ''}; the download was deleted")
            continue
        os.replace(part, done)
        size = done.stat().st_size
        _say(out, f"  {remote.name}  {_bytes(size)}  {_bytes((size - start) / max(took, 1e-9))}/s  "
                  f"{remote.algorithm} ok  {url}")
        return done
    kept = f"; the partial download {part} ({_bytes(part.stat().st_size)}) is kept: run the same command again " \
           f"to resume it" if part.is_file() else ""
    raise DownloadError(f"{remote.name}: no address served the published file: {'; '.join(failures)}{kept}")


def _download(url: str, part: Path, label: str, out: TextIO | None) -> tuple[int, float]:
    """Append the rest of `url` to `part` (an HTTP Range request when part has bytes; a server that ignores it
    sends the whole file, which replaces them). Returns (bytes there before, seconds taken)."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "diffgen-data-get"} | ({"Range": f"bytes={have}-"} if have else {})
    t0 = time.monotonic()
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after byte `have`: the partial file is whole (checked next)
            return have, time.monotonic() - t0
        raise _Refused(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _Refused(f"{getattr(e, 'reason', e)}") from None
    with response:
        if response.headers.get_content_type() == "text/html":
            raise _Refused("the server sent an HTML page (Content-Type text/html), not the file")
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise _Refused(f"asked for the bytes from {have} on, the server sent {response.headers['Content-Range']}")
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as f:
            shown = time.monotonic()
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    if time.monotonic() - shown > 0.25:
                        shown = time.monotonic()
                        _say(out, f"  {label}  {_bytes(f.tell())}{f' of {_bytes(total)}' if total else ''}  "
                                  f"{_bytes((f.tell() - start) / (shown - t0))}/s", live=True)
            except OSError as e:  # a reset or a timeout: keep what arrived
                raise _Refused(f"the connection broke after {f.tell()} bytes ({type(e).__name__}: {e})") from None
            size = f.tell()
    if total is not None and size < total:
        raise _Refused(f"the connection ended after {size} of {total} bytes")
    return start, time.monotonic() - t0


def _install(item: Item, files: list[Path], dest: Path) -> None:
    """Unpack into a temporary folder beside dest, write the manifest, rename it into place (a dest that did not
    verify is moved aside first and deleted once the new folder is in place)."""
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    old = dest.parent / f".{dest.name}.replaced"
    try:
        for path in files:
            item.unpack(path, staging)
        _write_manifest(staging, item)
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a run that was killed here
            os.rename(dest, old)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


def _bytes(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def _say(out: TextIO | None, line: str, live: bool = False) -> None:
    """A line of progress; `live` lines (bytes so far, rate) only on a terminal, each overwriting the last."""
    if out is None or (live and not out.isatty()):
        return
    out.write(f"\r\033[K{line}" if live else f"\r\033[K{line}\n" if out.isatty() else f"{line}\n")
    out.flush()
