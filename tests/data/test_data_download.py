"""download_task against a local HTTP server: success, resume, checksum, unsafe archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from medcontext.data import MSD_TASKS, DownloadError, download_task, resolve_task

TASK = "Task04_Hippocampus"


def make_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


PAYLOAD = make_tar(
    {
        f"{TASK}/dataset.json": b'{"name": "Hippocampus"}',
        f"{TASK}/imagesTr/hippocampus_001.nii.gz": np.random.default_rng(0).bytes(300_000),
        f"{TASK}/imagesTr/._hippocampus_001.nii.gz": b"macOS resource fork",
    }
)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """A threaded HTTP server on 127.0.0.1 serving ``/<TASK>.tar`` with Range support."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.ranges: list[str | None] = []
        self.cut_next = False
        self.ignore_range = False
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path != f"/{TASK}.tar":
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                state.ranges.append(header)
                data, start = state.payload, 0
                if header and not state.ignore_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.cut_next:  # promise everything, deliver half, hang up
                    state.cut_next = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server(PAYLOAD)
    yield srv
    srv.close()


def test_download_verify_extract_and_skip_second_time(server, tmp_path):
    out = download_task("hippocampus", tmp_path, base_url=server.url, md5=PAYLOAD_MD5, progress=False)
    assert out == tmp_path / TASK
    assert (out / "dataset.json").read_bytes() == b'{"name": "Hippocampus"}'
    assert len((out / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()) == 300_000
    assert not (out / "imagesTr" / "._hippocampus_001.nii.gz").exists()  # macOS junk skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == [TASK]  # archive and staging removed
    assert server.ranges == [None]
    again = download_task(TASK, tmp_path, base_url=server.url, md5=PAYLOAD_MD5, progress=False)
    assert again == out and server.ranges == [None]  # verified marker: no second request


def test_cut_transfer_resumes_with_range(server, tmp_path):
    server.cut_next = True
    out = download_task(TASK, tmp_path, base_url=server.url, md5=PAYLOAD_MD5, progress=False, keep_archive=True)
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert (tmp_path / f"{TASK}.tar").read_bytes() == PAYLOAD
    assert (out / "dataset.json").is_file()


def test_existing_part_file_is_resumed(server, tmp_path):
    (tmp_path / f"{TASK}.tar.part").write_bytes(PAYLOAD[:1000])
    download_task(TASK, tmp_path, base_url=server.url, md5=PAYLOAD_MD5, progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / TASK / "dataset.json").is_file()


def test_complete_part_file_and_server_ignoring_range(server, tmp_path):
    (tmp_path / f"{TASK}.tar.part").write_bytes(PAYLOAD)
    download_task(TASK, tmp_path, base_url=server.url, md5=PAYLOAD_MD5, progress=False)
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left to fetch
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{TASK}.tar.part").write_bytes(b"stale bytes from another file")
    server.ignore_range = True  # answers 200 with the whole file: start over
    download_task(TASK, other, base_url=server.url, md5=PAYLOAD_MD5, progress=False)
    assert (other / TASK / "imagesTr" / "hippocampus_001.nii.gz").is_file()


def test_checksum_mismatch_deletes_and_raises(server, tmp_path):
    with pytest.raises(DownloadError, match=rf"has MD5 {PAYLOAD_MD5}, expected 0{{32}}"):
        download_task(TASK, tmp_path, base_url=server.url, md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []  # no archive, no task folder


def test_unsafe_archive_is_refused(tmp_path):
    evil = Server(make_tar({f"{TASK}/dataset.json": b"{}", f"{TASK}/../../evil.txt": b"owned"}))
    try:
        with pytest.raises(DownloadError, match="unsafe path"):
            download_task(TASK, tmp_path / "out", base_url=evil.url, md5=hashlib.md5(evil.payload).hexdigest(),
                          progress=False)
    finally:
        evil.close()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / TASK).exists()


def test_archive_without_task_folder(tmp_path):
    srv = Server(make_tar({"something/else.txt": b"x"}))
    try:
        with pytest.raises(DownloadError, match=f"does not contain a top-level {TASK}/ folder"):
            download_task(TASK, tmp_path, base_url=srv.url, md5=hashlib.md5(srv.payload).hexdigest(), progress=False)
    finally:
        srv.close()
    assert not (tmp_path / TASK).exists()


def test_http_error_is_reported(tmp_path, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_task(TASK, tmp_path, base_url=server.url + "/missing", md5=PAYLOAD_MD5, progress=False)


def test_task_table_matches_monai_and_names_resolve():
    from monai.apps.datasets import DecathlonDataset

    assert list(MSD_TASKS) == [f"Task{i:02d}_{n}" for i, n in enumerate(
        ["BrainTumour", "Heart", "Liver", "Hippocampus", "Prostate", "Lung", "Pancreas", "HepaticVessel", "Spleen",
         "Colon"], start=1)]
    for name, task in MSD_TASKS.items():
        assert task.url == DecathlonDataset.resource[name] and task.md5 == DecathlonDataset.md5[name]
    assert resolve_task("Task09").name == resolve_task("9").name == resolve_task("spleen").name == "Task09_Spleen"
    with pytest.raises(ValueError, match="did you mean 'Task09_Spleen'"):
        resolve_task("Task09_Spleem")
