"""diffgen.data.downloads and `diffgen data`: fixture archives in the official formats (gzipped idx files, a tar.gz of
cifar-10-batches-bin/), their checksums computed here and put into copies of the registry's entries, served by an
HTTP server on 127.0.0.1 (with Range requests, HTML pages and cut connections on demand). Every other host is
blocked: a test that tries to reach one fails."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffgen.commands import cli
from diffgen.data import datasets, downloads
from diffgen.data.downloads import ITEMS, MANIFEST, DownloadError, Item, get, untar, verify
from diffgen.data.fixtures import IDX_NAMES, write_cifar10, write_mnist

LOCAL = ("127.0.0.1", "localhost")


class NetworkBlocked(RuntimeError):
    """Raised (not an OSError, so no retry logic swallows it) when a test reaches for a host other than 127.0.0.1."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Name lookups and connections to anything but 127.0.0.1 fail loudly, and are recorded so the test fails even
    if the error was caught."""
    tried = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL:
            tried.append(host)
            raise NetworkBlocked(f"a test looked up {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            tried.append(address[0])
            raise NetworkBlocked(f"a test connected to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(downloads.MIRRORS, raising=False)
    yield tried
    assert not tried, f"tests must not reach other hosts; tried {tried}"


def test_the_guard_blocks_other_hosts(no_network):
    with pytest.raises(NetworkBlocked):
        urllib.request.urlopen("http://example.com/", timeout=1)
    assert no_network == ["example.com"]
    no_network.clear()


class Server:
    """Files at paths, served on 127.0.0.1 with Range support; `cut[path] = k` sends only the first k bytes (with
    the full Content-Length) once; `html` paths answer with an HTML page; other paths 404; with `ignore_range` it
    answers a Range request with the whole file. `log` records (path, Range header, bytes sent)."""

    def __init__(self):
        self.files, self.cut, self.html, self.log, self.ignore_range = {}, {}, set(), [], False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path, rng = self.path, self.headers.get("Range")
                if path in server.html:
                    body = b"<!DOCTYPE html><html><body>Moved. Please log in.</body></html>"
                    return self._send(200, body, {"Content-Type": "text/html; charset=utf-8"}, path, rng)
                if path not in server.files:
                    return self._send(404, b"not found", {"Content-Type": "text/plain"}, path, rng)
                body, status, headers = server.files[path], 200, {"Content-Type": "application/octet-stream"}
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        return self._send(416, b"", {}, path, rng)
                    status, headers["Content-Range"] = 206, f"bytes {start}-{len(body) - 1}/{len(body)}"
                    body = body[start:]
                keep = server.cut.pop(path, None)
                self._send(status, body, headers, path, rng, keep)

            def _send(self, status, body, headers, path, rng, keep=None):
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                sent = body if keep is None else body[:keep]
                server.log.append((path, rng, len(sent)))  # before the bytes leave: the client cannot overtake it
                self.wfile.write(sent)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def mnist_files(tmp_path: Path) -> tuple[dict[str, bytes], dict]:
    arrays = write_mnist(tmp_path / "fixture-mnist", n_train=30, n_test=20)
    return {f"{n}.gz": (tmp_path / "fixture-mnist" / f"{n}.gz").read_bytes() for n in IDX_NAMES}, arrays


def cifar_archive(tmp_path: Path, n: int = 4) -> tuple[bytes, dict]:
    """A tar.gz of cifar-10-batches-bin/ as the official archive holds it (the five batches, the test batch,
    batches.meta.txt)."""
    src = tmp_path / "fixture-cifar"
    batches = write_cifar10(src, n=n)
    (src / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\nautomobile\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return buf.getvalue(), batches


def served(item: Item, server: Server, files: dict[str, bytes], prefix: str = "/official") -> Item:
    """The registry's entry with its files' addresses on the test server and the checksums of the fixture bytes."""
    for name, raw in files.items():
        server.files[f"{prefix}/{item.name}/{name}"] = raw
    return replace(item, files=tuple(replace(r, urls=(f"{server.url}{prefix}/{item.name}/{r.name}",),
                                             checksum=md5(files[r.name])) for r in item.files))


def leftovers(data_dir: Path) -> list[str]:
    """What a failed `get` left in the data folder, beside the lock file."""
    return sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.name != downloads.LOCK)


# ---------------------------------------------------------------------------------------------------------------
# The registry


def test_registry_entries_are_complete_and_match_the_loaders_layout():
    for name, item in ITEMS.items():
        assert item.name == name and item.files and item.source.startswith("https://")
        for r in item.files:
            assert r.urls and all(u.startswith(("http://", "https://")) and u.endswith("/" + r.name) for u in r.urls)
            assert len(r.checksum) == 2 * hashlib.new(r.algorithm).digest_size and int(r.checksum, 16) >= 0
            assert r.checksum == r.checksum.lower()
    # the data sets `data get` fetches are the ones datasets.py's message offers it for, into the folder read first
    assert set(datasets.FETCHABLE) <= set(ITEMS)
    for name in datasets.FETCHABLE:
        assert datasets._LAYOUT[name][0][0] == ITEMS[name].folder
    assert [r.name for r in ITEMS["mnist"].files] == [f"{n}.gz" for n in IDX_NAMES]


# ---------------------------------------------------------------------------------------------------------------
# End to end: fetched, unpacked, read by the project's loaders


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_data_sets_are_fetched_and_read_by_load_dataset(tmp_path, server, name):
    files, arrays = mnist_files(tmp_path)
    item = served(ITEMS[name], server, files)
    root = tmp_path / "data"
    assert get(item, root) is True
    assert sorted(p.name for p in (root / name).iterdir()) == sorted([*files, MANIFEST])
    assert all((root / name / f).read_bytes() == raw for f, raw in files.items())  # kept as published
    assert verify(root / name) is None
    assert leftovers(root) == sorted([name, *(f"{name}/{f}" for f in [*files, MANIFEST])])  # no .downloads
    ds = datasets.load_dataset(name, 30, 20, data_dir=root)
    expected_train = np.sort(arrays["train_x"][:, 0, 0]) / 127.5 - 1  # image k is filled with one value
    assert np.array_equal(np.sort(ds.train[:, 0].numpy()), expected_train)
    assert np.array_equal(np.sort(ds.heldout[:, 0].numpy()), np.sort(arrays["test_x"][:, 0, 0]) / 127.5 - 1)
    requests = len(server.log)
    assert get(item, root) is False and len(server.log) == requests  # there and verified: no request at all


def test_inception_weights_are_fetched_where_fid_looks_for_them(tmp_path, server):
    """`data get inception` writes DATA/inception/<the file diffgen.measures.fid reads>, checked by its sha256."""
    from diffgen.measures import fid

    raw = b"weights" * 1000
    item = ITEMS["inception"]
    server.files[f"/official/inception/{fid.INCEPTION_FILE}"] = raw
    item = replace(item, files=(replace(item.files[0], urls=(f"{server.url}/official/inception/{fid.INCEPTION_FILE}",),
                                        checksum=hashlib.sha256(raw).hexdigest()),))
    assert item.files[0].algorithm == "sha256" and ITEMS["inception"].files[0].checksum == fid.INCEPTION_SHA256
    assert get(item, tmp_path) is True
    assert (tmp_path / "inception" / fid.INCEPTION_FILE).read_bytes() == raw and verify(tmp_path / "inception") is None


def test_cifar10_is_fetched_unpacked_and_read_by_load_dataset(tmp_path, server):
    archive, batches = cifar_archive(tmp_path)
    item = served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": archive})
    root = tmp_path / "data"
    assert get(item, root) is True
    folder = root / "cifar-10-batches-bin"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert sorted(manifest["sha256"]) == sorted([*(f"{b}.bin" for b in batches), "batches.meta.txt"])
    assert manifest["downloads"] == [{"name": "cifar-10-binary.tar.gz", "md5": md5(archive)}]
    for file, sha in manifest["sha256"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == sha
    assert leftovers(root) == sorted(["cifar-10-batches-bin", *(f"cifar-10-batches-bin/{f}" for f in
                                                                [*manifest["sha256"], MANIFEST])])
    ds = datasets.labelled_splits("cifar10", data_dir=root)
    train = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert ds.x_fit.shape == (20, 3072) and ds.x_test.shape == (4, 3072)
    assert np.allclose(np.sort(ds.x_fit.numpy(), axis=0), np.sort(train / 127.5 - 1, axis=0), atol=1e-6)
    assert np.array_equal(np.sort(ds.y_test.numpy()), np.sort(batches["test_batch"][1]))


# ---------------------------------------------------------------------------------------------------------------
# Interrupted, then resumed


def test_a_cut_connection_keeps_the_partial_file_and_the_next_run_resumes_it(tmp_path, server):
    archive, _ = cifar_archive(tmp_path, n=40)
    item = served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": archive})
    path = "/official/cifar10/cifar-10-binary.tar.gz"
    server.cut[path] = 5000
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=rf"connection ended after 5000 of {len(archive)} bytes.*partial download "
                                            r".*cifar-10-binary.tar.gz.part .*run the same command again to resume"):
        get(item, root)
    assert not (root / "cifar-10-batches-bin").exists()
    part = root / downloads.DOWNLOADS / "cifar10" / "cifar-10-binary.tar.gz.part"
    assert part.read_bytes() == archive[:5000]
    assert get(item, root) is True
    assert server.log == [(path, None, 5000), (path, "bytes=5000-", len(archive) - 5000)]  # the rest, not the whole
    assert verify(root / "cifar-10-batches-bin") is None and not (root / downloads.DOWNLOADS).exists()
    assert datasets.load_dataset("cifar10", 200, 40, data_dir=root).train.shape == (200, 3072)


def test_a_partial_file_that_is_already_whole_is_verified_not_downloaded_again(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    folder = tmp_path / "data" / downloads.DOWNLOADS / "mnist"
    folder.mkdir(parents=True)
    whole = files["train-images-idx3-ubyte.gz"]
    (folder / "train-images-idx3-ubyte.gz.part").write_bytes(whole)  # killed between the last byte and the rename
    assert get(item, tmp_path / "data") is True
    assert server.log[0] == ("/official/mnist/train-images-idx3-ubyte.gz", f"bytes={len(whole)}-", 0)  # 416
    assert verify(tmp_path / "data" / "mnist") is None


def test_a_server_that_ignores_range_sends_the_whole_file_which_replaces_the_partial_bytes(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    folder = tmp_path / "data" / downloads.DOWNLOADS / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz.part").write_bytes(b"x" * 10)
    server.ignore_range = True
    assert get(item, tmp_path / "data") is True
    assert server.log[0] == ("/official/mnist/train-images-idx3-ubyte.gz", "bytes=10-",
                             len(files["train-images-idx3-ubyte.gz"]))
    assert verify(tmp_path / "data" / "mnist") is None


# ---------------------------------------------------------------------------------------------------------------
# Bad downloads: one clear error, nothing a loader would read


def test_a_wrong_checksum_is_an_error_and_the_download_is_deleted(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    bad = replace(item, files=(replace(item.files[0], checksum=md5(b"something else")), *item.files[1:]))
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=rf"train-images-idx3-ubyte.gz: no address served the published file: "
                                            rf"{server.url}/official/mnist/train-images-idx3-ubyte.gz: md5 "
                                            rf"{md5(files['train-images-idx3-ubyte.gz'])} is not the published "
                                            rf"{md5(b'something else')}; the download was deleted$"):
        get(bad, root)
    assert leftovers(root) == []
    with pytest.raises(ValueError, match="no mnist files under"):
        datasets.load_dataset("mnist", 4, data_dir=root)


def test_an_html_page_instead_of_the_archive_is_refused(tmp_path, server):
    archive, _ = cifar_archive(tmp_path)
    item = served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": archive})
    server.html.add("/official/cifar10/cifar-10-binary.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"cifar-10-binary.tar.gz: no address served the published file: .*: "
                                            r"the server sent an HTML page \(Content-Type text/html\), not the file$"):
        get(item, root)
    assert leftovers(root) == []


def test_an_html_page_served_as_a_binary_is_caught_by_the_checksum(tmp_path, server):
    archive, _ = cifar_archive(tmp_path)
    item = served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": archive})
    server.files["/official/cifar10/cifar-10-binary.tar.gz"] = b"<!DOCTYPE html><html>Sign in</html>"
    with pytest.raises(DownloadError, match=r"is not the published .* \(the server sent an HTML page\); the "
                                            r"download was deleted"):
        get(item, tmp_path / "data")
    assert leftovers(tmp_path / "data") == []


def test_a_truncated_archive_is_an_error_and_nothing_is_unpacked(tmp_path, server):
    archive, _ = cifar_archive(tmp_path, n=40)
    cut = archive[: len(archive) // 2]
    item = served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": cut})  # the published checksum of the cut
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"cifar-10-binary.tar.gz could not be unpacked: not a complete tar "
                                            r"archive\? \((EOFError|ReadError)"):
        get(item, root)
    assert not (root / "cifar-10-batches-bin").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".cifar-10-batches-bin")]  # no staging folder left
    # the verified archive is kept, so a rerun does not download it again
    assert (root / downloads.DOWNLOADS / "cifar10" / "cifar-10-binary.tar.gz").read_bytes() == cut


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(target)
                tar.addfile(info, io.BytesIO(target))
            else:
                info.type, info.linkname = kind, target
                tar.addfile(info)
    return buf.getvalue()


GOOD = ("cifar-10-batches-bin/data_batch_1.bin", "file", b"\x00" * 3073)


@pytest.mark.parametrize("evil, says", [
    (("/tmp/evil", "file", b"x"), "member '/tmp/evil' is an absolute path"),
    (("cifar-10-batches-bin/../../evil", "file", b"x"), "member 'cifar-10-batches-bin/../../evil' is a path with '..'"),
    (("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/etc/passwd"), "member 'cifar-10-batches-bin/link' is a link to "
                                                                   "'/etc/passwd'"),
    (("cifar-10-batches-bin/up", tarfile.SYMTYPE, "../../evil"), "member 'cifar-10-batches-bin/up' is a link to "
                                                                "'../../evil'"),
    (("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "/etc/passwd"), "member 'cifar-10-batches-bin/hard' is a link to "
                                                                   "'/etc/passwd'"),
    (("cifar-10-batches-bin/dev", tarfile.CHRTYPE, ""), "member 'cifar-10-batches-bin/dev' is not a regular file or "
                                                       "folder"),
    (("elsewhere/data_batch_2.bin", "file", b"x"), "expected one top folder holding every member; found "
                                                   "cifar-10-batches-bin, elsewhere"),
], ids=["absolute", "dotdot", "symlink-absolute", "symlink-up", "hardlink", "device", "two-top-folders"])
def test_a_tar_member_that_would_escape_is_refused_before_anything_is_written(tmp_path, server, evil, says):
    archive = _tar([GOOD, evil])  # the good member comes first: nothing may be written before every member is checked
    item = served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": archive})
    root = tmp_path / "deep" / "data"
    with pytest.raises(DownloadError) as e:
        get(item, root)
    assert str(e.value).startswith(f"cifar-10-binary.tar.gz: {says}")
    assert not (root / "cifar-10-batches-bin").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name in ("evil", "link", "up", "hard", "dev", "data_batch_1.bin")]
    assert not [p for p in root.iterdir() if p.name.startswith(".cifar-10-batches-bin")]


def test_untar_strips_the_top_folder_and_keeps_nested_folders(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar([("top/a.bin", "file", b"a"), ("top/sub/b.bin", "file", b"bb")]))
    (tmp_path / "out").mkdir()
    untar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a.bin").read_bytes() == b"a"
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == b"bb"


# ---------------------------------------------------------------------------------------------------------------
# Mirrors, existing folders, progress


def test_mirrors_are_tried_first_then_the_published_address(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)  # published: /official/mnist/<file>
    for name, raw in list(files.items())[:2]:
        server.files[f"/mirror/mnist/{name}"] = raw  # the mirror has only the first two files
    assert get(item, tmp_path / "data", mirrors=[f"{server.url}/mirror/"]) is True
    paths = [p for p, _, _ in server.log]
    assert paths == [f"/mirror/mnist/{n}" for n in list(files)[:2]] + [
        p for n in list(files)[2:] for p in (f"/mirror/mnist/{n}", f"/official/mnist/{n}")]
    assert verify(tmp_path / "data" / "mnist") is None


def test_every_address_failing_is_one_error_naming_each(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    server.files.clear()
    with pytest.raises(DownloadError) as e:
        get(item, tmp_path / "data", mirrors=[f"{server.url}/m1", f"{server.url}/m2/"])
    assert str(e.value) == (f"train-images-idx3-ubyte.gz: no address served the published file: "
                            f"{server.url}/m1/mnist/train-images-idx3-ubyte.gz: HTTP 404 Not Found; "
                            f"{server.url}/m2/mnist/train-images-idx3-ubyte.gz: HTTP 404 Not Found; "
                            f"{server.url}/official/mnist/train-images-idx3-ubyte.gz: HTTP 404 Not Found")
    assert leftovers(tmp_path / "data") == []


def test_a_folder_not_written_by_data_get_is_left_alone(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    write_mnist(tmp_path / "data" / "mnist")  # the user's own files, no manifest
    before = {p: p.read_bytes() for p in (tmp_path / "data" / "mnist").iterdir()}
    with pytest.raises(DownloadError, match=rf"mnist: {tmp_path / 'data' / 'mnist'} exists and was not written by "
                                            r"diffgen data get .*move it aside"):
        get(item, tmp_path / "data")
    assert {p: p.read_bytes() for p in (tmp_path / "data" / "mnist").iterdir()} == before and server.log == []


def test_a_changed_or_missing_file_fails_verification_and_get_restores_it(tmp_path, server):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    root = tmp_path / "data"
    get(item, root)
    target = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    assert verify(root / "mnist") == ("t10k-labels-idx1-ubyte.gz changed since it was unpacked (its sha256 differs "
                                      "from the manifest's)")
    assert get(item, root) is True and target.read_bytes() == files["t10k-labels-idx1-ubyte.gz"]
    target.unlink()
    assert verify(root / "mnist") == "t10k-labels-idx1-ubyte.gz is missing"
    (root / "mnist" / MANIFEST).write_text("{not json")
    assert verify(root / "mnist").startswith(f"{MANIFEST} is unreadable")
    assert get(item, root) is True and verify(root / "mnist") is None
    assert not [p for p in root.iterdir() if p.name.startswith(".mnist")]  # the replaced folder is gone


def test_progress_is_one_line_per_file_off_a_terminal_and_live_on_one(tmp_path, server, monkeypatch):
    files, _ = mnist_files(tmp_path)
    item = served(ITEMS["mnist"], server, files)
    out = io.StringIO()
    get(item, tmp_path / "a", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"mnist -> {tmp_path / 'a' / 'mnist'}" and len(lines) == 6
    for line, (name, raw) in zip(lines[1:5], files.items()):
        assert line.startswith(f"  {name}  {len(raw)} B  ") and line.endswith(
            f"B/s  md5 ok  {server.url}/official/mnist/{name}")
    assert lines[5].startswith("mnist: 4 file(s) verified, unpacked into")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(downloads.time, "monotonic", iter(range(0, 10**6, 1)).__next__)  # 1 s per call: live lines
    tty = Tty()
    get(item, tmp_path / "b", out=tty)
    assert "\r\033[K  train-images-idx3-ubyte.gz  " in tty.getvalue() and " of " in tty.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The command


@pytest.fixture
def local_items(tmp_path, server, monkeypatch):
    """The registry with every entry served by the test server."""
    files, _ = mnist_files(tmp_path)
    archive, _ = cifar_archive(tmp_path)
    items = {"mnist": served(ITEMS["mnist"], server, files),
             "fashion-mnist": served(ITEMS["fashion-mnist"], server, files),
             "cifar10": served(ITEMS["cifar10"], server, {"cifar-10-binary.tar.gz": archive})}
    monkeypatch.setattr(downloads, "ITEMS", items)
    return items


def test_data_get_and_list(tmp_path, local_items, server, capsys, monkeypatch):
    root = tmp_path / "data"
    assert cli.main(["data", "list", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"mnist          {root / 'mnist'}" in out and "missing (diffgen data get mnist)" in out
    assert cli.main(["data", "get", "mnist", "cifar10", "mnist", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok  http://127.0.0.1") == 5 and "mnist: 4 file(s) verified" in out  # mnist once
    monkeypatch.setenv("DIFFGEN_DATA", str(root))
    assert cli.main(["data", "get", "cifar10"]) == 0
    assert "is there and verified; nothing to do" in capsys.readouterr().out
    write_mnist(root / "FashionMNIST" / "raw")  # torchvision's layout, put there by hand
    assert cli.main(["data", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["mnist"].endswith("present, verified") and rows["cifar10"].endswith("present, verified")
    assert rows["fashion-mnist"].endswith(f"present in {root / 'FashionMNIST' / 'raw'}, not verified (not from "
                                          f"diffgen data get)")
    cli._use_data_dir(root)
    cli._check_data_files({"mnist", "cifar10", "fashion-mnist"})  # a chapter run finds all three


def test_data_get_errors(tmp_path, local_items, server, capsys, monkeypatch):
    monkeypatch.delenv("DIFFGEN_DATA", raising=False)
    assert cli.main(["data", "get", "mnist"]) == 2
    assert capsys.readouterr().err == ("diffgen data: error: pass --data-dir FOLDER (or set $DIFFGEN_DATA): the "
                                       "folder the data sets go into\n")
    assert cli.main(["data", "get", "mnist", "imagenet", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("diffgen data: error: unknown name imagenet; diffgen data get knows mnist, "
                                       "fashion-mnist, cifar10\n")
    assert cli.main(["data", "get", "mnist", "--data-dir", str(tmp_path), "--mirror", "ftp://x/"]) == 2
    assert "a mirror is an http://, https:// or file: base URL" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli.main(["data", "list", "--data-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"diffgen data: error: --data-dir {tmp_path / 'file'} is not a folder\n"
    assert server.log == []
    server.files.clear()
    monkeypatch.setenv(downloads.MIRRORS, f"{server.url}/env-mirror")
    assert cli.main(["data", "get", "cifar10", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffgen data get cifar10: error: cifar-10-binary.tar.gz: no address served the published file: "
                          f"{server.url}/env-mirror/cifar10/cifar-10-binary.tar.gz: HTTP 404") and err.count("\n") == 1


def test_a_chapter_run_without_the_files_names_the_data_get_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGEN_DATA", str(tmp_path))
    for name in datasets.FETCHABLE:
        with pytest.raises(cli.UsageError, match=rf"no {name} files under .*; `diffgen data get {name} --data-dir "
                                                 rf"{tmp_path}` downloads and verifies it$"):
            cli._check_data_files({name})
    monkeypatch.setenv("DIFFGEN_DATA", "")
    with pytest.raises(ValueError, match=r"`diffgen data get cifar10 --data-dir FOLDER` downloads and verifies it$"):
        datasets.data_folder("cifar10")
    with pytest.raises(ValueError) as e:
        datasets.data_folder("celeba", tmp_path)
    assert "diffgen data get" not in str(e.value)  # CelebA is not fetched
