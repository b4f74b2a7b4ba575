"""MLflow: an unreachable or silent tracking server fails in seconds; two runs at once share a sqlite store.

What each test guards:
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
from omegaconf import OmegaConf

from helpers import CACHE_DIR, REPO
from reliability_helpers import TINY, error_lines, run_stage


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
    from helpers import compose_train
    from training.tracking import PROBE_TIMEOUT_S, TrackingStoreError
    from training.loop.train import train

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # connections complete in the kernel's backlog; nothing ever reads or answers
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(TrackingStoreError, match="tracking server not reachable .*timed out"):
            train(compose_train([*TINY, f"mlflow.tracking_uri={uri}"], tmp_path))
        assert time.perf_counter() - start < PROBE_TIMEOUT_S + 10
    assert not (tmp_path / "outputs" / "train").exists()


@pytest.mark.slow
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
    from training.tracking import recorded_run_id

    recorded = {recorded_run_id(tmp_path / n / "train") for n in ("a", "b")}
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


@pytest.mark.slow
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


def _store_cfg(tmp_path, uri=None):
    return OmegaConf.create({"mlflow": {"tracking_uri": uri or f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "stylepipe",
                                        "artifact_dir": None}, "paths": {"root_dir": str(tmp_path)}})


def test_a_run_killed_earlier_is_closed_as_killed_by_the_next_run(tmp_path, caplog):
    from training.tracking import HOST_TAG, PROCESS_TAG, mlflow_run

    cfg = _store_cfg(tmp_path)
    doomed = subprocess.run([sys.executable, "-c", (
        "import os, signal\nfrom omegaconf import OmegaConf\nfrom training.tracking import mlflow_run\n"
        f"cfg = OmegaConf.create({OmegaConf.to_container(cfg)!r})\n"
        "with mlflow_run(cfg, 'doomed') as run:\n    print(run.info.run_id, flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)\n")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert doomed.returncode == -9, doomed.stderr[-2000:]
    killed_id = doomed.stdout.split()[-1]
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    assert client.get_run(killed_id).info.status == "RUNNING"  # what MLflow would show forever
    experiment = client.get_experiment_by_name("stylepipe").experiment_id
    elsewhere = client.create_run(experiment, tags={HOST_TAG: "another-machine", PROCESS_TAG: "1-0.000"}).info.run_id
    with caplog.at_level("INFO", logger="stylepipe.tracking"), mlflow_run(cfg, "next"):
        pass
    assert client.get_run(killed_id).info.status == "KILLED"
    assert client.get_run(elsewhere).info.status == "RUNNING"  # another machine's run may still be alive
    assert f"run {killed_id} was left RUNNING by a process that no longer exists; marked KILLED" in caplog.text


def test_mlflow_tracking_uri_from_the_environment_and_the_config_wins(tmp_path, monkeypatch, caplog):
    from hydra import compose, initialize_config_dir

    from training.tracking import mlflow_run

    env_uri = f"sqlite:///{tmp_path / 'from_env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        assert compose("train").mlflow.tracking_uri == env_uri  # no mlflow.tracking_uri given: the environment's
    chosen = _store_cfg(tmp_path)  # mlflow.tracking_uri given: the config wins
    with caplog.at_level("INFO", logger="stylepipe.tracking"), mlflow_run(chosen, "chosen"):
        pass
    assert f"mlflow.tracking_uri=sqlite:///$TMPDIR" in caplog.text and "wins over MLFLOW_TRACKING_URI" in caplog.text
    assert (tmp_path / "mlflow.db").exists() and not (tmp_path / "from_env.db").exists()
