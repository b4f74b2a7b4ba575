"""MLflow tracking shared by every stage: one run per invocation, config as params.

Under `dvc repro` / `dvc exp run` every stage run is a child of one pipeline run, found or created
by the first stage and keyed on the dvc process all stages of that invocation share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from training.errors import Interrupted, StylepipeError
from training.fileio import atomic_write_text, unwritable_reason

log = logging.getLogger("stylepipe.tracking")
MAX_PARAM_VALUE = 6000
PARAMS_PER_BATCH = 100
# MLflow retries an unreachable server for minutes; the probe before any work waits this long.
PROBE_TIMEOUT_S = 5.0
# Config keys whose values are never logged (credentials passed as overrides).
SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
# An absolute path: "/" + at least one name, not preceded by a character that makes it part of a
# URL or a relative path ("http://host/x", "a/b").
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~$>-])/[^\s'\",\]\[}{]+")


class TrackingStoreError(StylepipeError):
    """The MLflow tracking store cannot be reached or created."""


# Beside a stage's outputs: the MLflow run that wrote them. A run id names a run of this machine's
# store, so it stays out of the outputs, which DVC hashes (.dvcignore leaves this file out too).
RUN_ID_RECORD = "mlflow_run.json"


def record_run_id(folder, run_id: str) -> None:
    atomic_write_text(Path(folder) / RUN_ID_RECORD, json.dumps({"mlflow_run_id": run_id}) + "\n")


def last_logged_step(run_id: str, metric: str = "loss") -> int:
    """The last step at which an MLflow run holds a point of `metric` (0: none)."""
    import mlflow

    return max((m.step for m in mlflow.MlflowClient().get_metric_history(run_id, metric)), default=0)


def recorded_run_id(folder) -> str | None:
    """The MLflow run `record_run_id` wrote in `folder`; None: none, or no readable record."""
    try:
        return json.loads((Path(folder) / RUN_ID_RECORD).read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


PIPELINE_RUN_ENV = "STYLEPIPE_PIPELINE_RUN_ID"  # set it to hang stage runs under a pipeline run of your own
PIPELINE_KEY_TAG = "stylepipe.pipeline_key"    # on the pipeline run: which dvc invocation it belongs to


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """{"a.b.c": "value"} for every leaf, scrubbed by `loggable_config`."""
    flat: dict[str, str] = {}

    def visit(node, key):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                visit(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = str(node)[:MAX_PARAM_VALUE]

    visit(loggable_config(cfg), prefix)
    return flat


def loggable_config(cfg: DictConfig | dict):
    """The config as plain containers with no secret and no absolute path of this machine in it."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg

    def scrub(node, key=""):
        if isinstance(node, dict):
            return {k: scrub(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v, key) for v in node]
        if node is not None and SECRET_KEY.search(key):
            return "***"
        return scrub_path(node) if isinstance(node, str) else node

    return scrub(container)


def scrub_path(value: str) -> str:
    """No credentials and no absolute paths of this machine in a logged value.

    The working directory, temp dir and home become ".", "$TMPDIR" and "~" (what is below them
    stays: it says which data or run it was); any other absolute path keeps only its last name.
    """
    value = URL_CREDENTIALS.sub(r"\g<scheme>***@", value)
    for root, alias in ((os.getcwd(), "."), (tempfile.gettempdir(), "$TMPDIR"), (str(Path.home()), "~")):
        if root not in ("", "/"):
            value = value.replace(root, alias)
    scheme, local, rest = value.partition(":///")
    if local and scheme == "sqlite":  # sqlite:////abs/mlflow.db (sqlite:///rel.db is relative)
        return f"sqlite:///{_scrub_absolute_paths(rest)}"
    if local and scheme == "file":  # file:///abs/path
        return f"file://{_scrub_absolute_paths('/' + rest)}"
    return _scrub_absolute_paths(value)


def _scrub_absolute_paths(value: str) -> str:
    return ABSOLUTE_PATH.sub(lambda m: f"<abs>/{m.group(0).rstrip('/').rsplit('/', 1)[-1]}", value)


def log_skipped_files(skipped) -> None:
    """The skip report of a data load as an MLflow artifact of the active run, every file named,
    machine paths scrubbed (nothing logged when nothing was skipped)."""
    import mlflow

    if skipped.count():
        mlflow.log_text(scrub_path(skipped.summary(limit=skipped.count())), "data/skipped_files.txt")


# An MLflow REST call every tracking server answers: 200, or 404 with MLflow's own error code.
PROBE_PATH = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


def check_tracking_store(uri: str) -> None:
    """Fail in seconds, before any work, when the tracking store cannot be used.

    MLflow retries an unreachable server with back-off for minutes: probe it once, with a short
    timeout, through MLflow's own REST API, so a server that is up but is not MLflow (or is failing)
    is reported too.
    """
    if uri.startswith(("http://", "https://")):
        shown = scrub_path(uri)
        local_store = "or use the local store mlflow.tracking_uri=sqlite:///mlflow.db"
        try:
            urllib.request.urlopen(uri.rstrip("/") + PROBE_PATH, timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError as err:
            if err.code == 404 and _mlflow_error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                return  # MLflow answering: it has no experiment of that name
            raise TrackingStoreError(
                f"mlflow.tracking_uri={shown}: the server answered HTTP {err.code} ({err.reason}) to MLflow's API: "
                f"{'not an MLflow tracking server, or the wrong address' if err.code == 404 else 'it is failing'}; "
                f"check the address and the server, {local_store}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise TrackingStoreError(
                f"mlflow.tracking_uri={shown}: tracking server not reachable ({reason}). Start it "
                f"(mlflow server --host 127.0.0.1 --port PORT) {local_store}") from None
    elif db := _sqlite_path(uri):
        if not db.parent.is_dir():
            raise TrackingStoreError(f"mlflow.tracking_uri={scrub_path(uri)}: folder {db.parent} does not exist")
        # sqlite writes a journal beside the database: its folder must take writes, and the file itself.
        reason = unwritable_reason(db.parent) or (db.exists() and not os.access(db, os.W_OK) and "the file is read-only")
        if reason:
            raise TrackingStoreError(f"mlflow.tracking_uri={scrub_path(uri)}: the tracking database cannot be written "
                                     f"({reason}); make it writable or use another, e.g. mlflow.tracking_uri=sqlite:///mlflow.db")


def _mlflow_error_code(err: urllib.error.HTTPError) -> str | None:
    try:
        return json.loads(err.read(4096).decode()).get("error_code")
    except (ValueError, AttributeError, OSError):
        return None


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_setup_lock(uri: str):
    """Serialise MLflow's first use of a sqlite store across processes.

    Two runs started together on a new store both run its schema migrations (and both create the
    experiment), and one of them fails; under an exclusive file lock the second finds them done.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def dvc_invocation_key() -> str | None:
    """`<pid>-<start time>` of the nearest `dvc` process above this one (plus the experiment name
    under `dvc exp run`), the same for every stage of one invocation; None when not run by dvc."""
    import psutil

    try:
        for process in psutil.Process().parents():
            try:
                argv = process.cmdline()
            except psutil.Error:  # another user's process, or gone
                continue
            if _is_dvc_command(argv):
                if (key := _process_id(process.pid)) is None:  # ended meanwhile
                    return None
                experiment = os.environ.get("DVC_EXP_NAME")
                return f"{key}-{experiment}" if experiment else key
    except psutil.Error:
        return None
    return None


def _is_dvc_command(argv: list[str]) -> bool:
    # `dvc ...` (console script, maybe run by its python) or `python -m dvc ...`
    return any(Path(arg).name == "dvc" for arg in argv[:2]) or argv[1:3] == ["-m", "dvc"]


def pipeline_choices(root_dir) -> dict[str, str]:
    """The choices the pipeline runs with (params.yaml at the repo root), flattened; {} without one."""
    path = Path(root_dir) / "params.yaml"
    return flatten_config(OmegaConf.to_container(OmegaConf.load(path))) if path.is_file() else {}


def pipeline_run_id(cfg: DictConfig, experiment_id: str) -> str | None:
    """The pipeline run this stage belongs to: $STYLEPIPE_PIPELINE_RUN_ID, else the one of the
    running dvc invocation (created by its first stage), else None (a stage run on its own)."""
    if run_id := os.environ.get(PIPELINE_RUN_ENV):
        return run_id
    key = dvc_invocation_key()
    if key is None:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(cfg.mlflow.tracking_uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    choices = pipeline_choices(cfg.paths.root_dir)
    name = "-".join(["pipeline", *(choices[k] for k in ("style", "model") if k in choices)])
    tags = {PIPELINE_KEY_TAG: key, "stage": "pipeline", **{k: choices[k] for k in ("style", "model") if k in choices}}
    if experiment := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = experiment
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    items = sorted(choices.items())
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + PARAMS_PER_BATCH]])
    return run.info.run_id


def _create_experiment(client, mlflow_cfg: DictConfig) -> None:
    """Create the experiment if it is new, with its artifacts in `artifact_dir`, by default mlruns/ beside
    a local store's database.

    MLflow would put a sqlite store's artifacts in ./mlruns of whatever folder the process runs in, away
    from the store; an existing experiment keeps the location it was made with. A server (http://...)
    decides where its artifacts go, so it is left to choose unless artifact_dir is set.
    """
    artifact_dir, db = mlflow_cfg.get("artifact_dir"), _sqlite_path(mlflow_cfg.tracking_uri)
    if artifact_dir is None and db is not None:
        artifact_dir = db.parent / "mlruns"
    if artifact_dir is not None and client.get_experiment_by_name(mlflow_cfg.experiment) is None:
        client.create_experiment(mlflow_cfg.experiment, artifact_location=Path(artifact_dir).resolve().as_uri())


HOST_TAG, PROCESS_TAG = "stylepipe.host", "stylepipe.process"  # which process on which machine runs a run


def _process_id(pid: int) -> str | None:
    """`<pid>-<start>`: names one process, not a later one that reuses its pid; None if it is gone.

    On Linux the start is the kernel's clock-tick count at the process's start (/proc/<pid>/stat). psutil's
    create_time adds that to the kernel's boot time, which the kernel derives from the wall clock, so it
    moves when the clock is stepped (NTP, a VM's clock): one process's create_time has read 5 to 53 s
    apart, which split one `dvc repro` into several pipeline runs and would make a running process look ended.
    """
    if Path("/proc/self/stat").is_file():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime; the name may hold spaces
    import psutil

    try:
        return f"{pid}-{psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def process_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PROCESS_TAG: _process_id(os.getpid()) or str(os.getpid())}


def close_killed_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED the runs of this machine still RUNNING whose process has ended (killed, or lost
    power): MLflow would show them running forever. Runs of other machines are left alone."""
    running = client.search_runs([experiment_id], filter_string=(
        f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"), max_results=200)
    closed = []
    for run in running:
        process = run.data.tags.get(PROCESS_TAG, "")
        pid = process.split("-")[0]
        if pid.isdigit() and _process_id(int(pid)) != process:
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def _continuable_run(client, run_id: str | None, experiment_id: str):
    """The run `run_id` of this store and experiment, None when there is none to continue."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active" else None


@contextlib.contextmanager
def mlflow_run(cfg: DictConfig, run_name: str, tags: dict | None = None, parent_run_id: str | None = None,
               continue_run_id: str | None = None):
    """Start an MLflow run on cfg.mlflow's store, logging the flattened config as params.

    Its parent is the pipeline run when there is one (see pipeline_run_id), else `parent_run_id`.
    `continue_run_id`: a run of this store to continue (a resumed training run's earlier part), when it
    exists and has no parent; its params stay, a value the new config changes is tagged `changed.<key>`.
    """
    import mlflow

    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        if env != cfg.mlflow.tracking_uri:
            log.info("MLflow: mlflow.tracking_uri=%s from the config wins over MLFLOW_TRACKING_URI=%s",
                     scrub_path(cfg.mlflow.tracking_uri), scrub_path(env))
        else:
            log.info("MLflow: tracking to %s (MLFLOW_TRACKING_URI)", scrub_path(env))
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    with _store_setup_lock(cfg.mlflow.tracking_uri):  # a new store's client migrates its schema
        client = mlflow.MlflowClient()
        _create_experiment(client, cfg.mlflow)
        experiment = mlflow.set_experiment(cfg.mlflow.experiment)
    for run_id in close_killed_runs(client, experiment.experiment_id):
        log.info("MLflow: run %s was left RUNNING by a process that no longer exists; marked KILLED", run_id)
    pipeline = pipeline_run_id(cfg, experiment.experiment_id)
    if pipeline:
        client.update_run(pipeline, status="RUNNING")
    if parent_run_id and not _continuable_run(client, parent_run_id, experiment.experiment_id):
        log.info("MLflow: run %s (the parent recorded beside the input) is not in this store; this run has no parent",
                 parent_run_id)
        parent_run_id = None
    earlier = _continuable_run(client, continue_run_id, experiment.experiment_id) if not (pipeline or parent_run_id) else None
    status = "FAILED"
    try:
        with mlflow.start_run(run_id=earlier.info.run_id if earlier else None, run_name=run_name,
                              tags={**(tags or {}), **process_tags()}, parent_run_id=pipeline or parent_run_id) as run:
            params = flatten_config(cfg)
            if earlier:
                log.info("MLflow: continuing run %s (this run's earlier part)", earlier.info.run_id)
                logged = earlier.data.params
                mlflow.set_tags({f"changed.{k}": v for k, v in params.items() if k in logged and logged[k] != v})
                params = {k: v for k, v in params.items() if k not in logged}
            items = sorted(params.items())
            for i in range(0, len(items), PARAMS_PER_BATCH):
                mlflow.log_params(dict(items[i : i + PARAMS_PER_BATCH]))
            mlflow.log_text(OmegaConf.to_yaml(loggable_config(cfg)), "config/composed.yaml")
            try:
                yield run
            except (KeyboardInterrupt, Interrupted):
                status = "KILLED"  # stopped by its user, not failed
                mlflow.end_run(status)
                raise
        status = "FINISHED"
    finally:
        if pipeline:  # the pipeline run ends with its latest stage, failed if that stage failed
            client.set_terminated(pipeline, status=status)
