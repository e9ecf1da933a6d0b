"""MLflow tracking of one run: params, tags, batched metrics, artifacts and the final status.

Everything goes through an explicit `MlflowClient` bound to one run id, never MLflow's
process-global active run, so a study can log its own parent and trial runs in the same
process. Metrics use `step` = counted env steps. Ctrl-C waits for a write in progress to end
(`harness.signals`): an SQLite write cut short keeps its lock, and the run could then not be
marked KILLED.

Store: `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the embedded SQLite store
`runs/mlflow.db` under the working directory (as an absolute path, so a resumed run finds
it from anywhere). The `./mlruns` file store is deprecated and raises in current MLflow, so
it is refused here with a clear message. Artifacts of experiments created here go to
`mlartifacts/` next to the SQLite file.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import UserError, first_line
from harness.signals import signals_deferred

DEFAULT_TRACKING_DB = Path("runs") / "mlflow.db"
#: The URI schemes of MLflow stores (SQLAlchemy databases, with or without a driver, and servers).
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # database servers, reached through SQLAlchemy
CONNECT_TIMEOUT_S = 10
DEFAULT_EXPERIMENT = "gorl-bench"
STEP_METRIC = "steps/counted"


def resolve_tracking_uri(uri: str | None, create: bool = True) -> str:
    """The tracking URI to use, made absolute for SQLite; creates the SQLite file's directory
    unless `create` is False (a store that must exist already: a resumed or diagnosed run's)."""

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_TRACKING_DB.resolve()}"
    # MLflow takes these words for stores, not paths: "databricks" is the Databricks workspace of the
    # default profile; "databricks-uc" and "uc" name Unity Catalog, which MLflow refuses for tracking.
    named_store = uri in ("databricks", "databricks-uc", "uc")
    if uri.startswith("file:") or ("://" not in uri and not named_store):
        if Path(uri).suffix in (".db", ".sqlite", ".sqlite3"):  # a path that names an SQLite file
            raise UserError(
                f"tracking URI {uri!r} is a path: for an SQLite store there, write sqlite:///{uri}."
            )
        raise UserError(
            f"tracking URI {uri!r} is a file store, which MLflow has deprecated and refuses. Use an SQLite "
            f"store such as sqlite:///runs/mlflow.db, or a server such as http://127.0.0.1:5000."
        )
    scheme = url_scheme(uri)
    if scheme not in STORE_SCHEMES:
        raise UserError(
            f"tracking URI {uri!r} names no MLflow store: use sqlite:///PATH, postgresql://..., mysql://..., "
            f"or a tracking server's http(s):// address."
        )
    if scheme == "sqlite" and (not uri.startswith("sqlite:///") or uri.endswith(":memory:")):
        raise UserError(
            f"tracking URI {uri!r} is an in-memory SQLite store, which keeps nothing after the run: use a "
            "file, sqlite:///PATH."
        )
    path = sqlite_path(uri)
    if path is not None:
        path = path.resolve()
        if create:
            _create_store_directory(path)
        _check_sqlite_store(path)
        uri = f"sqlite:///{path}"
    if scheme in ("http", "https"):
        _check_server(uri)
    if scheme in DATABASE_SCHEMES:
        check_database(uri, "the MLflow store")
    return sqlalchemy_url(uri)


def _create_store_directory(path: Path) -> None:
    """The SQLite file's directory, checked at once: MLflow retries a store it cannot open for
    about 100 s before it fails, which looks like a hang."""

    try:
        is_dir = path.is_dir()
    except OSError as error:  # a name over 255 bytes, say
        raise UserError(f"cannot use the MLflow store {path}: {error.strerror}.") from None
    if is_dir:
        raise UserError(f"the SQLite store {path} is a directory; name a file in it, e.g. {path}/mlflow.db.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror
        raise UserError(f"cannot create the MLflow store's directory {path.parent}: {reason}.") from None
    writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK | os.X_OK)
    if not writable:
        where = path if path.exists() else path.parent
        raise UserError(f"cannot write the MLflow store {path}: {where} is not writable.")


@contextmanager
def writing_to(tracking_uri: str) -> Iterator[None]:
    """Writes to the MLflow store: a store this process may read but not write (a read-only file,
    a database user without write rights) is one clear error, not MLflow's traceback."""

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError) as error:
        reason = first_line(error)
        raise UserError(f"cannot write to the MLflow store {tracking_uri}: {reason}") from None


def _check_server(uri: str) -> None:
    """Ask a tracking server's health endpoint once: MLflow's own client retries a server that is
    down for minutes before it fails, which looks like a hang."""

    import http.client
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
            return
    except (ValueError, http.client.InvalidURL) as error:  # a malformed address (a port that is no number)
        raise UserError(f"the MLflow tracking server address {uri} is not a valid URL ({error}).") from None
    except urllib.error.HTTPError:
        return  # it answered: a server (perhaps behind a proxy without /health)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"cannot reach the MLflow tracking server at {uri}: {reason}.") from None


def check_database(url: str, what: str) -> None:
    """Connect once to the database server at `url` (`what` names it in errors), with a short
    timeout: MLflow retries a server it cannot reach for about 100 s before it fails, and a
    missing driver would end in an ImportError."""

    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    url = sqlalchemy_url(url)
    # psycopg, psycopg2 and the MySQL drivers take `connect_timeout`; other drivers their default.
    timeout = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=timeout)
    except ImportError as error:
        raise UserError(
            f"cannot open {what} {url}: its database driver is not installed ({error}). Install it, or name "
            f"an installed one in the URL ({url_scheme(url)}+DRIVER://...)."
        ) from None
    except (SQLAlchemyError, ValueError) as error:  # a malformed URL (a port that is no number)
        raise UserError(f"cannot open {what} {url}: it is not a valid database URL ({error}).") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        reason = first_line(error)
        raise UserError(f"cannot reach {what} {url}: {reason}") from None
    finally:
        engine.dispose()


def url_scheme(url: str) -> str:
    """The database or store kind a URL names, without a driver: "postgresql" for
    postgresql+psycopg2://..."""

    return url.partition("://")[0].partition("+")[0]


def sqlalchemy_url(url: str) -> str:
    """Name the installed PostgreSQL driver: SQLAlchemy 2.1 assumes psycopg 3 for a bare URL.

    Used for both stores (Optuna's and MLflow's), which open their URLs through SQLAlchemy.
    """

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def git_commit() -> str:
    """The commit of the checkout this code runs from, or "unknown" outside a git checkout."""

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


#: Libraries whose builds decide a run's floating-point results, with the seed and the thread counts.
NUMERIC_LIBRARIES = ("torch", "mujoco", "numpy", "dm-control", "gymnasium")


def machine_tags(device: str = "cpu") -> dict[str, str]:
    """Where a run's numbers come from besides its settings: the CPU model (MuJoCo's and torch's
    kernels round differently on other CPUs, so a seed fixes every number only on one kind of
    machine), Python and the numeric libraries' versions, and for a run on a GPU (`device` cuda or
    cuda:N) the GPU's name and torch's CUDA version. MLflow tags `machine.*` and `version.*`."""

    from importlib.metadata import PackageNotFoundError, version

    libc = " ".join(platform.libc_ver()) or "no C library found"
    tags = {
        "machine.cpu": _cpu_model(),
        # The OS, the architecture and the C library (its libm rounds numpy's math), not the kernel
        # release (`platform.platform()`'s): cluster nodes alike but for their kernel build gave
        # every resumed run a "resumed on another machine" note for a change that rounds nothing.
        "machine.platform": f"{platform.system()} {platform.machine()}, {libc}",
        "version.python": platform.python_version(),
    }
    for name in NUMERIC_LIBRARIES:
        try:
            tags[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            tags[f"version.{name}"] = "not installed"
    if device.startswith("cuda"):
        import torch

        tags["machine.gpu"] = torch.cuda.get_device_name(torch.device(device))
        tags["version.cuda"] = str(torch.version.cuda)
    return tags


def machine_changes(recorded: Mapping[str, str], device: str = "cpu") -> dict[str, str]:
    """This machine's `machine_tags` that differ from those a run `recorded` when it started ("none"
    for one of them this machine has not, such as a GPU's); {} for a run that recorded none (it
    started before runs recorded them, so nothing can be compared)."""

    if "machine.cpu" not in recorded:
        return {}
    here = machine_tags(device)
    if recorded.get("machine.platform") == platform.platform():  # recorded with the kernel release
        recorded = {**recorded, "machine.platform": here["machine.platform"]}
    keys = set(here) | {key for key in recorded if key.startswith(("machine.", "version."))}
    return {
        key: here.get(key, "none")
        for key in sorted(keys)
        if here.get(key, "none") != recorded.get(key, "none")
    }


def _cpu_model() -> str:
    """The CPU's model name, family and model numbers (Linux's /proc/cpuinfo: a virtual machine's
    name can be generic, its numbers are not), else what the platform module says."""

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not key.strip():  # the first processor's block ends here
                    break
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        numbers = f" (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
        return fields["model name"] + numbers
    return platform.processor() or platform.machine() or "unknown"


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """A small TOML writer for tables of scalars and flat lists. None, which TOML lacks, is written
    as "none", the word a study spec and `--set` take for it."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(item) for item in v) + "]"
        text = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'

    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for key, v in table.items():
            lines.append(f'{key} = "none"' if v is None else f"{key} = {value(v)}")
        lines.append("")
    return "\n".join(lines)


def sqlite_path(uri: str) -> Path | None:
    """The file of an SQLite store (`sqlite:///PATH`); None for any other store."""

    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def sqlite_store_missing(uri: str) -> bool:
    """Whether `uri` names an SQLite store whose file does not exist: MLflow would create it empty
    (typically a store that has moved, or one on the machine that created a study)."""

    path = sqlite_path(uri)
    return path is not None and not path.is_file()


def open_store(tracking_uri: str) -> Any:
    """An `MlflowClient` on the store at `tracking_uri`, read once: a file that is not a database, a
    database it may not read or a driver that is missing fails here, as one line, rather than at
    the first write of a run or study."""

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with _sqlite_setup_lock(tracking_uri):
            _create_sqlite_store(tracking_uri)
            client = MlflowClient(tracking_uri=tracking_uri)  # a database store is opened (and set up) here
        client.search_experiments(max_results=1)  # a server's store is reached here
    except (MlflowException, SQLAlchemyError, ImportError) as error:
        reason = first_line(error)
        raise UserError(f"cannot open the MLflow store {tracking_uri}: {reason}") from None
    return client


# Tables of an MLflow tracking store, which an Optuna study storage never has.
MLFLOW_TABLES = {"experiments", "runs"}


def sqlite_tables(path: Path) -> set[str]:
    """The names of the tables in the SQLite file at `path`, read without writing anything;
    sqlite3.DatabaseError for a file that is not a database or that this user may not read."""

    import sqlite3
    from urllib.parse import quote

    connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        connection.close()
    return {name for (name,) in rows}


def _check_sqlite_store(path: Path) -> None:
    """Refuse an SQLite file that holds another database before MLflow opens it: MLflow adds its
    tables to any database, and in an Optuna study storage (whose schema version table it takes
    for its own) then fails with a traceback, leaving the storage refused as a tracking store."""

    import sqlite3

    if not path.is_file():
        return  # a new store
    try:
        tables = sqlite_tables(path)
    except sqlite3.DatabaseError as error:  # not a database, or one this user may not read
        raise UserError(f"cannot open the MLflow store sqlite:///{path}: {error}.") from None
    if not tables or tables >= MLFLOW_TABLES:
        return
    if "studies" in tables:
        raise UserError(
            f"sqlite:///{path} is an Optuna study storage, not an MLflow tracking store, so it is left "
            f"untouched. Pass it as --storage, and as --tracking-uri a store of its own (default "
            f"sqlite:///{DEFAULT_TRACKING_DB})."
        )
    names = ", ".join(sorted(tables)[:5])
    raise UserError(
        f"sqlite:///{path} is an SQLite database of something else (tables {names}), not an MLflow "
        "tracking store, so it is left untouched. Pass a store's file, or a new or empty one."
    )


def _create_sqlite_store(tracking_uri: str) -> None:
    """Set a new SQLite store's tables up in a file beside it, then rename that into place: MLflow
    creates them one migration at a time (a second or two), and a store cut short by Ctrl-C or a
    kill in between could never be opened again ("table ... already exists"). Called under
    `_sqlite_setup_lock`, which makes the leftovers of a set-up cut short safe to remove."""

    import uuid

    from mlflow.tracking import MlflowClient

    path = sqlite_path(tracking_uri)
    if path is None or path.exists() or not path.parent.is_dir():
        return  # another store; an existing one; no directory (opening the store says why)
    for leftover in path.parent.glob(f".{path.name}.setup-*"):  # with their -journal files
        leftover.unlink(missing_ok=True)
    # A new name each time: MLflow keeps each URI's database engine for the life of the process.
    staging = path.with_name(f".{path.name}.setup-{uuid.uuid4().hex}")
    MlflowClient(tracking_uri=f"sqlite:///{staging}").search_experiments(max_results=1)
    os.replace(staging, path)


@contextmanager
def _sqlite_setup_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on an SQLite store's directory: two runs started at the same moment
    on a new store both ran MLflow's table creation, and one failed ("table ... already exists").
    Database servers and tracking servers serialise their own set-up."""

    path = sqlite_path(tracking_uri)
    if path is None:
        yield
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # no directory to lock: opening the store fails, and says why
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # on the directory, so that no lock file is left beside the store
        yield
    finally:
        os.close(fd)  # releases the lock


def check_run_exists(tracking_uri: str, run_id: str) -> None:
    """A clear error unless the store at `tracking_uri` holds run `run_id` (a store that has moved
    since the run started is the usual cause)."""

    _find_run(tracking_uri, run_id)


def _find_run(tracking_uri: str, run_id: str) -> tuple[Any, Any]:
    """(an `MlflowClient` on the store at `tracking_uri`, its run `run_id`), or `check_run_exists`'s
    error."""

    from mlflow.exceptions import MlflowException

    missing = (
        f"the MLflow store {tracking_uri} has no run {run_id}. If the store has moved, pass its new "
        f"location with --tracking-uri."
    )
    if sqlite_store_missing(tracking_uri):  # checked first: MLflow would create it empty
        raise UserError(missing)
    client = open_store(tracking_uri)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise UserError(missing) from None


def check_run_continuable(tracking_uri: str, run_id: str) -> Any:
    """The MLflow run `run_id`: `check_run_exists`, and a clear error when the run, or its
    experiment, was deleted (MLflow then refuses every write to it)."""

    client, run = _find_run(tracking_uri, run_id)
    restore = f"with MLFLOW_TRACKING_URI={tracking_uri}) to continue it."
    if run.info.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow run {run_id} was deleted; restore it (`mlflow runs restore --run-id {run_id}` {restore}"
        )
    experiment = client.get_experiment(run.info.experiment_id)
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment {experiment.name!r} of run {run_id} was deleted; restore it (`mlflow "
            f"experiments restore --experiment-id {experiment.experiment_id}` {restore}"
        )
    return run


def local_artifacts_gone(artifact_uri: str) -> bool:
    """Whether `artifact_uri` is a local directory that does not exist. MLflow records it as an
    absolute path, which does not follow a store that has moved, and writing there would
    recreate the old folder. (Every run logs its config.toml at its start, so a run's directory
    exists unless it has moved.)"""

    from urllib.parse import urlparse

    from mlflow.utils.file_utils import local_file_uri_to_path

    if urlparse(artifact_uri).scheme not in ("", "file"):
        return False  # an artifact server or a cloud bucket: nothing local to check
    return not Path(local_file_uri_to_path(artifact_uri)).is_dir()


def _create_experiment(client: Any, name: str, location: str | None) -> str:
    """Create experiment `name`, or take the one a run started at the same moment created first
    (the loser of that race failed on the name's uniqueness)."""

    from mlflow.exceptions import MlflowException

    try:
        with signals_deferred():
            return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def kill_running_runs(
    tracking_uri: str, experiment_id: str, matches: Callable[[Any], bool], reason: str | None = None
) -> None:
    """Mark KILLED (with `reason` as its status_reason, if given) each run of the experiment that
    is RUNNING and `matches`: runs a killed process left RUNNING, which `mlflow ui` would show
    running for ever. The matching is done here, not in an MLflow filter string: a value (a run
    directory, a unit's key) may hold a quote that would end the filter's string literal."""

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if matches(run):
            RunTracker(tracking_uri, run.info.run_id).end("KILLED", reason)


class RunTracker:
    """One MLflow run. Metrics at steps already in the store (a resumed run) are skipped."""

    def __init__(self, tracking_uri: str, run_id: str, logged_through: int = -1) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.logged_through = logged_through

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str | None,
        run_name: str | None,
        parent_run_id: str | None,
        tags: Mapping[str, str],
    ) -> RunTracker:
        name = experiment or DEFAULT_EXPERIMENT
        client = open_store(tracking_uri)
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {name!r} was deleted; restore it (`mlflow experiments restore "
                f"--experiment-id {found.experiment_id}` with MLFLOW_TRACKING_URI={tracking_uri}) or "
                "choose another experiment name (`run --experiment`; a study's experiment is its spec's "
                "`name`)."
            )
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = None
        try:
            with writing_to(tracking_uri):
                if found is not None:
                    experiment_id = found.experiment_id
                else:
                    store = sqlite_path(tracking_uri)
                    location = None if store is None else (store.parent / "mlartifacts").as_uri()
                    experiment_id = _create_experiment(client, name, location)
                with signals_deferred():
                    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            return cls(tracking_uri, run.info.run_id)
        except BaseException:  # an interrupt held back until the run was written: it must not stay RUNNING
            if run is not None:
                cls(tracking_uri, run.info.run_id).end("KILLED", "stopped while starting")
            raise

    @classmethod
    def reopen(cls, tracking_uri: str, run: Any, tags: Mapping[str, str] | None = None) -> RunTracker:
        """Continue `run`, as `check_run_continuable` found it: mark it running again (setting
        `tags`, if given) and skip metrics at steps it already has."""

        run_id = run.info.run_id
        tracker = cls(tracking_uri, run_id)
        history = tracker.client.get_metric_history(run_id, STEP_METRIC)
        tracker.logged_through = max((m.step for m in history), default=-1)
        try:
            with signals_deferred(), writing_to(tracking_uri):
                tracker.client.update_run(run_id, status="RUNNING")
                for key, value in (tags or {}).items():
                    tracker.client.set_tag(run_id, key, value)
                if "status_reason" in run.data.tags:
                    tracker.client.delete_tag(run_id, "status_reason")  # from an earlier stop
        except KeyboardInterrupt:  # held back until the writes ended: the run must not stay RUNNING
            tracker.end("KILLED", "stopped while resuming")
            raise
        return tracker

    def close_stopped_starts(self, tag: str) -> None:
        """Mark KILLED the runs of this run's experiment left RUNNING with its value of `tag`: with
        the run directory's, those of processes killed while they started there, before a first
        checkpoint (the caller holds the directory, so none of them is alive)."""

        run = self.client.get_run(self.run_id)
        value = run.data.tags[tag]
        kill_running_runs(
            self.tracking_uri,
            run.info.experiment_id,
            lambda other: other.info.run_id != self.run_id and other.data.tags.get(tag) == value,
            f"stopped while it started; started again as MLflow run {self.run_id}",
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, "none" if v is None else str(v)) for key, v in params.items()]
        with signals_deferred():
            for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One batched write per call. Steps up to `logged_through` are dropped: a resumed run starts
        there. A run puts `STEP_METRIC` in every batch, which is how `reopen` finds that step."""

        if step <= self.logged_through:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(v), now, step) for key, v in metrics.items()]
        with signals_deferred():
            self.client.log_batch(self.run_id, metrics=batch)

    def log_text(self, text: str, artifact_file: str) -> None:
        with signals_deferred():
            self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> bool:
        """Attach a file; False (and nothing written) when the run's local artifact directory has
        moved (see `local_artifacts_gone`): the caller says so."""

        if local_artifacts_gone(self.client.get_run(self.run_id).info.artifact_uri):
            return False
        with signals_deferred():
            self.client.log_artifact(self.run_id, str(path), artifact_dir)
        return True

    def end(self, status: str, reason: str | None = None) -> None:
        """Mark the run FINISHED, FAILED or KILLED; `reason` is kept as the `status_reason` tag."""

        with signals_deferred():
            if reason:
                self.client.set_tag(self.run_id, "status_reason", reason[:5000])
            self.client.set_terminated(self.run_id, status=status)
