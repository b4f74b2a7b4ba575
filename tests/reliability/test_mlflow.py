"""MLflow: an unreachable or silent tracking server fails in seconds; two runs at once share a sqlite store.

Issue #7 bullet -> test:
- unreachable tracking server: clear error within seconds, not a hang:
  test_closed_port_is_a_one_line_error_within_seconds, test_silent_server_times_out_in_seconds
- two training runs at once on the same sqlite store both complete and both are recorded:
  test_two_runs_at_once_share_a_new_sqlite_store
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import CACHE_DIR, REPO
from helpers import TINY, error_lines, run_stage


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_closed_port_is_a_one_line_error_within_seconds(tmp_path):
    """Guards the probe before any work: without it MLflow retries with back-off for minutes, after the
    data and models were loaded."""
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    result = run_stage("train", [*TINY, f"mlflow.tracking_uri={uri}"], tmp_path, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: mlflow.tracking_uri={uri}: tracking server not reachable") and "sqlite" in line
    assert elapsed < 20, elapsed
    assert not (tmp_path / "outputs").exists()


def test_silent_server_times_out_in_seconds(tmp_path):
    """Guards the probe's timeout: a server that accepts connections and never answers (a hung
    process, a firewall) is reported after PROBE_TIMEOUT_S, not waited on; in-process too (train())."""
    from conftest import compose_train
    from training.tracking import PROBE_TIMEOUT_S, TrackingStoreError
    from training.train import train

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # connections complete in the kernel's backlog; nothing ever reads or answers
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(TrackingStoreError, match="tracking server not reachable .*timed out"):
            train(compose_train([*TINY, f"mlflow.tracking_uri={uri}"], tmp_path))
        assert time.perf_counter() - start < PROBE_TIMEOUT_S + 10
    assert not (tmp_path / "outputs" / "train").exists()


def test_two_runs_at_once_share_a_new_sqlite_store(tmp_path):
    """Guards the store set-up lock: two processes creating the same new sqlite store race on its schema
    migrations and on creating the experiment (one fails without the lock); both must finish and be
    recorded, each with its own run."""
    db = tmp_path / "mlflow.db"
    procs = []
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "pipelines.train", f"paths.output_dir={tmp_path / name}", f"paths.cache_dir={CACHE_DIR}",
               f"mlflow.tracking_uri=sqlite:///{db}", "trainer.progress=false", *TINY, "trainer.steps=2",
               f"run_name=concurrent-{name}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=400)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for e in errors]
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["stylepipe"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["concurrent-a", "concurrent-b"]
    assert all(r.info.status == "FINISHED" and "loss" in r.data.metrics for r in runs)
    recorded = {json.loads((tmp_path / n / "train" / "metrics.json").read_text())["mlflow_run_id"] for n in ("a", "b")}
    assert recorded == {r.info.run_id for r in runs}


class _Answering:
    """An HTTP server in a thread that answers every GET with one status (a proxy, another service)."""

    def __init__(self, status: int):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"<html>not mlflow</html>")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status, what", [(404, "not an MLflow tracking server"), (503, "it is failing")])
def test_a_server_that_is_not_mlflow_is_a_one_line_error_within_seconds(tmp_path, status, what):
    with _Answering(status) as server:
        start = time.perf_counter()
        result = run_stage("train", [*TINY, f"mlflow.tracking_uri={server.uri}"], tmp_path, timeout=120)
        elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: mlflow.tracking_uri={server.uri}: the server answered HTTP {status}") and what in line
    assert elapsed < 20, elapsed
    assert not (tmp_path / "outputs").exists()


def test_a_real_mlflow_server_passes_the_probe(tmp_path):
    from training.tracking import check_tracking_store

    port = closed_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                check_tracking_store(f"http://127.0.0.1:{port}")
                break
            except Exception as err:  # noqa: BLE001 - the server is still starting
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"the MLflow server never passed the probe: {err}") from None
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(30)
