"""OpenFWI manifest, local copies, split.json, and the resumable verified downloader.

Downloads run against a local HTTP server on 127.0.0.1 started by the tests; no test needs
the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from wavediffusion.data import download as dl
from wavediffusion.data.download import (
    DownloadError,
    IntegrityError,
    ManualDownloadRequired,
    download_family,
    download_file,
)
from wavediffusion.data.families import FAMILIES, SAMPLES_PER_FILE, SEISMIC_SHAPE, VELOCITY_SHAPE
from wavediffusion.data.make_openfwi_manifest import MANIFEST_PATH, build_manifest, npy_size, render
from wavediffusion.data.openfwi import (
    ManifestEntry,
    family_files,
    folder_pairs,
    load_manifest,
    local_family,
    local_family_pairs,
    read_split_file,
    write_split_file,
)

# --- a local HTTP server ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server: FileServer = self.server  # type: ignore[assignment]
        record = {"path": self.path, "range": self.headers.get("Range"), "status": None, "sent": 0}
        server.requests.append(record)
        body = server.files.get(self.path)
        if body is None:
            record["status"] = 404
            self.send_error(404)
            return
        start = 0
        if record["range"] and server.honour_range:
            start = int(record["range"].removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                record["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            record["status"] = 206
        else:
            self.send_response(200)
            record["status"] = 200
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        limit = server.drop_after.pop(0) if server.drop_after else None
        if limit is not None:  # announce the full length, send part of it, hang up
            payload = payload[:limit]
            self.close_connection = True
        # recorded before writing: the client can finish reading (and the test assert)
        # before this thread returns from write()
        record["sent"] = len(payload)
        self.wfile.write(payload)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.honour_range = True
        self.drop_after: list[int | None] = []  # per request: bytes to send before hanging up

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_WAIT_S", 0.0)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONTENT = os.urandom(300_000)  # several 1 MiB reads would be slower; 300 kB spans many TCP segments
DIGEST = hashlib.sha256(CONTENT).hexdigest()


# --- download_file -------------------------------------------------------------------------


def test_full_download(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    dest = tmp_path / "sub" / "f.npy"
    assert download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False) == dest
    assert dest.read_bytes() == CONTENT
    assert not (tmp_path / "sub" / "f.npy.part").exists()
    assert [r["range"] for r in server.requests] == [None]


def test_resume_from_partial_file(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    dest = tmp_path / "f.npy"
    (tmp_path / "f.npy.part").write_bytes(CONTENT[:123_456])
    download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False)
    assert dest.read_bytes() == CONTENT
    (request,) = server.requests
    assert request["range"] == "bytes=123456-"
    assert request["status"] == 206
    assert request["sent"] == len(CONTENT) - 123_456


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    server.honour_range = False
    dest = tmp_path / "f.npy"
    (tmp_path / "f.npy.part").write_bytes(b"\0" * 1000)  # would corrupt the file if appended to
    download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False)
    assert dest.read_bytes() == CONTENT
    (request,) = server.requests
    assert request["range"] == "bytes=1000-" and request["status"] == 200 and request["sent"] == len(CONTENT)


def test_checksum_mismatch(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    dest = tmp_path / "f.npy"
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(IntegrityError) as caught:
        download_file(server.url("/f.npy"), dest, len(CONTENT), wrong, progress=False)
    message = str(caught.value)
    assert str(dest) in message and wrong in message and DIGEST in message
    assert not dest.exists()
    assert not (tmp_path / "f.npy.part").exists()  # unverified bytes are not kept for a resume


def test_size_mismatch(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    dest = tmp_path / "f.npy"
    with pytest.raises(IntegrityError) as caught:
        download_file(server.url("/f.npy"), dest, len(CONTENT) + 10, None, progress=False)
    message = str(caught.value)
    assert str(dest) in message and str(len(CONTENT) + 10) in message and str(len(CONTENT)) in message
    assert not dest.exists()


def test_dropped_connection_leaves_no_final_file_and_resumes(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    server.drop_after = [100_000]
    dest = tmp_path / "f.npy"
    with pytest.raises(DownloadError, match="Run again to resume"):
        download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False, retries=0)
    assert not dest.exists()
    part = tmp_path / "f.npy.part"
    assert part.read_bytes() == CONTENT[:100_000]
    download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False, retries=0)
    assert dest.read_bytes() == CONTENT and not part.exists()
    assert server.requests[1]["range"] == "bytes=100000-"
    assert server.requests[1]["sent"] == len(CONTENT) - 100_000


def test_dropped_connection_is_resumed_within_one_call(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    server.drop_after = [50_000, 60_000]
    dest = tmp_path / "f.npy"
    download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False, retries=2)
    assert dest.read_bytes() == CONTENT
    assert [r["range"] for r in server.requests] == [None, "bytes=50000-", "bytes=110000-"]


def test_complete_part_file_is_verified_without_refetching_body(server, tmp_path):
    server.files["/f.npy"] = CONTENT
    dest = tmp_path / "f.npy"
    (tmp_path / "f.npy.part").write_bytes(CONTENT)
    download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False)
    assert dest.read_bytes() == CONTENT and server.requests == []
    # without a known size the server is asked; it answers 416 "nothing after this byte"
    dest.unlink()
    (tmp_path / "f.npy.part").write_bytes(CONTENT)
    download_file(server.url("/f.npy"), dest, None, DIGEST, progress=False)
    assert dest.read_bytes() == CONTENT and server.requests[-1]["status"] == 416


def test_existing_verified_file_is_skipped(server, tmp_path):
    dest = tmp_path / "f.npy"
    dest.write_bytes(CONTENT)
    before = dest.stat().st_mtime_ns
    download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False)
    assert server.requests == [] and dest.stat().st_mtime_ns == before


def test_existing_wrong_file_is_reported_and_kept(server, tmp_path):
    dest = tmp_path / "f.npy"
    dest.write_bytes(CONTENT[:10])
    with pytest.raises(IntegrityError, match="expected 300000 bytes, got 10"):
        download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False)
    assert dest.read_bytes() == CONTENT[:10] and server.requests == []


def test_http_error_names_url_and_destination(server, tmp_path):
    dest = tmp_path / "missing.npy"
    with pytest.raises(DownloadError) as caught:
        download_file(server.url("/missing.npy"), dest, 10, None, progress=False)
    assert "404" in str(caught.value) and str(dest) in str(caught.value)
    assert not dest.exists() and not (tmp_path / "missing.npy.part").exists()


def test_offline_error_says_what_to_fetch_and_where(tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/FlatVel_A/data/data1.npy"
    dest = tmp_path / "FlatVel_A" / "data" / "data1.npy"
    with pytest.raises(ManualDownloadRequired) as caught:
        download_file(url, dest, 10, None, progress=False)
    message = str(caught.value)
    assert url in message and str(dest) in message and "data.openfwi_root" in message
    assert caught.value.files == [(url, dest)]
    assert not (dest.parent / "data1.npy.part").exists()


def test_concurrent_download_of_same_file_is_refused(server, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    server.files["/f.npy"] = CONTENT
    dest = tmp_path / "f.npy"
    with open(tmp_path / "f.npy.part", "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="another process"):
            download_file(server.url("/f.npy"), dest, len(CONTENT), DIGEST, progress=False)
    assert not dest.exists()


# --- download_family -----------------------------------------------------------------------


def fake_manifest(server: FileServer, with_urls: bool = True) -> list[ManifestEntry]:
    """FlatVel-A with two train pairs and one test pair, served by `server`."""
    entries = []
    for split, numbers in (("train", (1, 2)), ("test", (49,))):
        for n in numbers:
            for kind, path in (("seismic", f"data/data{n}.npy"), ("velocity", f"model/model{n}.npy")):
                body = f"{kind} {n} ".encode() * 100
                server.files[f"/mirror/FlatVel_A/{path}"] = body
                url = server.url(f"/mirror/FlatVel_A/{path}") if with_urls else None
                digest = hashlib.sha256(body).hexdigest()
                entries.append(ManifestEntry("FlatVel-A", split, kind, path, len(body), digest, url, "https://drive.example/folder"))
    return entries


def test_download_family_lands_files_in_openfwi_layout_and_skips_them_later(server, tmp_path):
    manifest = fake_manifest(server)
    paths = download_family("FlatVel-A", tmp_path, manifest=manifest, progress=False)
    assert paths[0] == tmp_path / "FlatVel_A" / "data" / "data1.npy"
    assert all(p.read_bytes() == server.files[f"/mirror/FlatVel_A/{e.path}"] for p, e in zip(paths, manifest))
    assert len(server.requests) == 6
    assert download_family("FlatVel-A", tmp_path, manifest=manifest, progress=False) == paths
    assert len(server.requests) == 6  # nothing fetched again


def test_download_family_one_split_and_base_url(server, tmp_path):
    manifest = fake_manifest(server, with_urls=False)
    paths = download_family(
        "FlatVel-A", tmp_path, splits=("test",), manifest=manifest, progress=False, base_url=server.url("/mirror/")
    )
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["FlatVel_A/data/data49.npy", "FlatVel_A/model/model49.npy"]
    assert all(p.exists() for p in paths)


def test_download_family_without_urls_explains_manual_fetch(server, tmp_path):
    manifest = fake_manifest(server, with_urls=False)
    with pytest.raises(ManualDownloadRequired) as caught:
        download_family("FlatVel-A", tmp_path, manifest=manifest, progress=False)
    message = str(caught.value)
    assert "https://drive.example/folder" in message and "data.openfwi_root" in message
    for entry in manifest:
        assert str(tmp_path / "FlatVel_A" / entry.path) in message
    assert server.requests == []
    # files put in place by hand are accepted without any URL
    for entry in manifest:
        dest = tmp_path / "FlatVel_A" / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(server.files[f"/mirror/FlatVel_A/{entry.path}"])
    assert len(download_family("FlatVel-A", tmp_path, manifest=manifest, progress=False)) == 6


def test_download_family_offline_lists_every_remaining_file(tmp_path):
    base = f"http://127.0.0.1:{unused_port()}/mirror"
    manifest = [
        ManifestEntry("FlatVel-A", "train", kind, path, 10, None, f"{base}/FlatVel_A/{path}", "https://drive.example/folder")
        for kind, path in (("seismic", "data/data1.npy"), ("velocity", "model/model1.npy"))
    ]
    with pytest.raises(ManualDownloadRequired) as caught:
        download_family("FlatVel-A", tmp_path, splits=("train",), manifest=manifest, progress=False)
    message = str(caught.value)
    assert "Cannot reach 127.0.0.1" in message and "data.openfwi_root" in message
    for entry in manifest:
        assert entry.url in message and str(tmp_path / "FlatVel_A" / entry.path) in message
    assert len(caught.value.files) == 2


# --- the manifest --------------------------------------------------------------------------


def test_manifest_covers_every_family_with_the_right_counts_names_and_sizes():
    manifest = load_manifest()
    seismic_size, velocity_size = 700_000_128, 9_800_128
    assert {e.family for e in manifest} == set(FAMILIES)
    for family in FAMILIES.values():
        for split, files in (("train", family.train_files), ("test", family.test_files)):
            entries = [e for e in manifest if e.family == family.name and e.split == split]
            seismic = [e for e in entries if e.kind == "seismic"]
            velocity = [e for e in entries if e.kind == "velocity"]
            assert len(seismic) == len(velocity) == files, (family.name, split)
            assert all(Path(e.path).name.startswith(family.seismic_prefix) for e in seismic)
            assert all(Path(e.path).name.startswith(family.velocity_prefix) for e in velocity)
            assert {e.size for e in seismic} == {seismic_size} and {e.size for e in velocity} == {velocity_size}
    relative = [e.relative_path for e in manifest]
    assert len(set(relative)) == len(relative) == 1880
    for e in manifest:
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0)
        assert e.url is None or (e.url.startswith("https://") and e.url.endswith("/" + e.relative_path))
        assert e.folder_url.startswith("https://drive.google.com/drive/folders/")


def test_manifest_sizes_are_npy_files_with_128_byte_headers():
    assert npy_size((SAMPLES_PER_FILE, *SEISMIC_SHAPE)) == 128 + 500 * 5 * 1000 * 70 * 4 == 700_000_128
    assert npy_size((SAMPLES_PER_FILE, *VELOCITY_SHAPE)) == 128 + 500 * 70 * 70 * 4 == 9_800_128
    small = io.BytesIO()
    np.save(small, np.zeros((2, 5, 10, 7), np.float32))
    assert npy_size((2, 5, 10, 7)) == len(small.getvalue())


def test_manifest_json_is_what_the_generator_builds():
    assert MANIFEST_PATH.read_text() == render(build_manifest())


def test_family_files_follow_openfwi_split_files():
    assert family_files("FlatVel-A", "train")[0] == ("data/data1.npy", "model/model1.npy")
    assert family_files("FlatVel-A", "train")[-1] == ("data/data48.npy", "model/model48.npy")
    assert family_files("CurveVel-B", "test")[0] == ("data/data49.npy", "model/model49.npy")
    assert family_files("FlatFault-A", "train")[0] == ("seis2_1_0.npy", "vel2_1_0.npy")
    assert family_files("FlatFault-A", "test")[-1] == ("seis4_1_35.npy", "vel4_1_35.npy")
    assert family_files("CurveFault-B", "train")[32] == ("seis7_1_0.npy", "vel7_1_0.npy")
    assert family_files("Style-B", "test") == [(f"data/data{n}.npy", f"model/model{n}.npy") for n in range(121, 135)]
    with pytest.raises(ValueError, match="split"):
        family_files("Style-B", "val")


# --- local copies and split.json -----------------------------------------------------------


def make_tree(folder: Path, relative_paths) -> None:
    for relative in relative_paths:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros(1, np.float32))


def test_local_pairs_in_native_layout(tmp_path):
    pairs = [p for split in ("train", "test") for p in family_files("FlatVel-A", split)]
    make_tree(tmp_path / "FlatVel_A", [name for pair in pairs for name in pair])
    train = local_family_pairs(tmp_path, "FlatVel-A", "train")
    assert len(train) == 48
    assert train[0] == (tmp_path / "FlatVel_A/data/data1.npy", tmp_path / "FlatVel_A/model/model1.npy")
    assert local_family_pairs(tmp_path, "FlatVel-A", "test")[-1][1] == tmp_path / "FlatVel_A/model/model60.npy"
    # pointing at the family folder itself works too
    assert local_family_pairs(tmp_path / "FlatVel_A", "FlatVel-A", "train") == train


def test_local_pairs_found_in_other_sub_folders(tmp_path):
    pairs = family_files("FlatFault-B", "test")
    make_tree(tmp_path / "FlatFault_B", [f"unzipped/part{i % 2}/{name}" for i, pair in enumerate(pairs) for name in pair])
    found = local_family_pairs(tmp_path, "FlatFault-B", "test")
    assert [(s.name, v.name) for s, v in found] == pairs


def test_local_pairs_missing_file_names_file_and_root(tmp_path):
    pairs = family_files("CurveVel-A", "test")
    make_tree(tmp_path / "CurveVel_A", [name for pair in pairs for name in pair if name != "model/model55.npy"])
    with pytest.raises(FileNotFoundError) as caught:
        local_family_pairs(tmp_path, "CurveVel-A", "test")
    assert "model/model55.npy" in str(caught.value) and str(tmp_path) in str(caught.value)
    with pytest.raises(FileNotFoundError, match="Style_A"):
        local_family_pairs(tmp_path, "Style-A", "test")


def test_local_pairs_ambiguous_copies_are_an_error(tmp_path):
    pairs = family_files("CurveVel-A", "test")
    make_tree(tmp_path / "CurveVel_A" / "x", [Path(n).name for pair in pairs for n in pair])
    make_tree(tmp_path / "CurveVel_A" / "y", ["data49.npy"])
    with pytest.raises(ValueError, match="ambiguous"):
        local_family_pairs(tmp_path, "CurveVel-A", "test")


def test_split_file_overrides_manifest(tmp_path):
    folder = tmp_path / "FlatFault_A"
    make_tree(folder, ["seis1.npy", "vel1.npy", "seis2.npy", "vel2.npy", "seis3.npy", "vel3.npy"])
    pairs = {"train": [["seis1.npy", "vel1.npy"], ["seis2.npy", "vel2.npy"]], "test": [["seis3.npy", "vel3.npy"]]}
    write_split_file(folder / "split.json", "FlatFault-A", pairs)
    assert json.loads((folder / "split.json").read_text()) == {"family": "FlatFault-A", **pairs}
    split = read_split_file(folder / "split.json")
    assert split.family == "FlatFault-A" and split.pairs["test"] == [("seis3.npy", "vel3.npy")]
    assert local_family_pairs(tmp_path, "FlatFault-A", "train") == [
        (folder / "seis1.npy", folder / "vel1.npy"),
        (folder / "seis2.npy", folder / "vel2.npy"),
    ]
    # a split.json of another family in this folder is a mistake, not something to follow
    write_split_file(folder / "split.json", "FlatFault-B", pairs)
    with pytest.raises(ValueError, match="FlatFault-B"):
        local_family_pairs(tmp_path, "FlatFault-A", "train")


def test_local_family_keeps_openfwi_split_only_when_every_file_is_there(tmp_path):
    pairs = [p for split in ("train", "test") for p in family_files("FlatVel-A", split)]
    make_tree(tmp_path / "FlatVel_A", [name for pair in pairs for name in pair])
    local = local_family(tmp_path, "FlatVel-A")
    assert local.split_by == "openfwi" and len(local.file_split["train"]) == 48 and len(local.file_split["test"]) == 12
    # one pair gone: no longer OpenFWI's split, so every pair left is split by map, in numeric order
    (tmp_path / "FlatVel_A/data/data55.npy").unlink()
    (tmp_path / "FlatVel_A/model/model55.npy").unlink()
    local = local_family(tmp_path, "FlatVel-A")
    assert local.split_by == "maps" and local.file_split is None and local.official_missing == 2
    assert [s.name for s, _ in local.pairs_to_split[:11]] == [f"data{n}.npy" for n in range(1, 12)]
    assert all(s.name[4:] == v.name[5:] for s, v in local.pairs_to_split) and len(local.pairs_to_split) == 59


def test_folder_pairs_refuses_a_file_without_its_partner(tmp_path):
    folder = tmp_path / "FlatFault_A"
    make_tree(folder, ["seis1.npy", "vel1.npy", "seis2_1_0.npy", "part/vel3.npy"])
    with pytest.raises(ValueError) as caught:
        folder_pairs(folder, "FlatFault-A")
    message = str(caught.value)
    assert str(folder / "seis2_1_0.npy") in message and str(folder / "part/vel3.npy") in message
    assert "seis1.npy" not in message and "no partner" in message
    (folder / "seis2_1_0.npy").unlink()
    (folder / "part/vel3.npy").unlink()
    assert folder_pairs(folder, "FlatFault-A") == [(folder / "seis1.npy", folder / "vel1.npy")]


@pytest.mark.parametrize(
    "document, match",
    [
        ({"family": "FlatVel-A", "train": [["/abs/data1.npy", "model1.npy"]], "test": []}, "relative"),
        ({"family": "FlatVel-A", "train": [["../data1.npy", "model1.npy"]], "test": []}, "relative"),
        ({"family": "FlatVel-A", "train": [["data1.npy"]], "test": []}, "pair"),
        ({"family": "FlatVel-A", "train": []}, "missing"),
        ({"family": "Nope", "train": [], "test": []}, "unknown OpenFWI family"),
    ],
)
def test_invalid_split_files_are_rejected(tmp_path, document, match):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=match):
        read_split_file(path)
    with pytest.raises(ValueError):
        write_split_file(tmp_path / "other.json", document["family"], {k: v for k, v in document.items() if k != "family"})


# --- the command the download_openfwi rule runs ----------------------------------------------


def test_download_command_writes_its_record_only_when_complete(server, tmp_path, monkeypatch, capsys):
    from wavediffusion import cli
    from wavediffusion.data import download

    manifest = fake_manifest(server, with_urls=False)
    monkeypatch.setattr(download, "load_manifest", lambda: manifest)
    record = tmp_path / "FlatVel_A" / "download.json"
    args = ["download-openfwi", "--family", "FlatVel-A", "--dest", str(tmp_path), "--record", str(record)]
    # no URL and no mirror: exit 2 with the manual-download message, no record
    assert cli.main(args) == 2
    assert "data.download_base_url" in capsys.readouterr().err and not record.exists()
    assert cli.main([*args, "--base-url", server.url("/mirror/")]) == 0
    files = json.loads(record.read_text())["files"]
    assert [f["path"] for f in files] == [f"FlatVel_A/{e.path}" for e in manifest]
