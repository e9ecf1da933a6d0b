"""Where a study lives, how a worker claims a unit, and how units of dead workers are recovered.

Two storages:

* the embedded default, an Optuna journal file (`runs/studies.journal`): safe for several
  processes on one machine, not for several machines (file locks over NFS are unreliable);
* an RDB URL (`postgresql://...`, also `sqlite:///...` for one machine): workers on
  different hosts share one study. Other database servers are refused: `serialized` has no
  lock on them.

Exactly-once: every unit is an enqueued WAITING trial, and a worker claims one by moving it
WAITING -> RUNNING. Every storage makes that transition atomic (a row lock on PostgreSQL, the
order of the log on the journal, a file lock around claims and sweeps on an SQLite file, which
ignores row locks: `serialized`), so two workers never claim the same trial. `serialized` also
keeps two `study run`s of a new study from both creating it, on one machine for the files and on
every machine for PostgreSQL (an advisory lock).

Recovery: a claimed trial records its owner (host, pid) with the claim and keeps a heartbeat while it runs.
A trial is *lost* when its owner is a dead process on this host, or, for an owner on another
host, when its heartbeat is older than the grace period (Optuna's heartbeat table on RDB, a
trial attribute on the journal, which has no heartbeat of its own). A worker on this host is
judged by its process alone on every storage: its heartbeat can be old while it lives (after a
suspend). `sweep_lost_units` marks lost trials FAILED and enqueues the
same parameters again, so the unit is completed exactly once by whichever worker claims it next.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState, create_trial

from harness.errors import UserError, first_line
from harness.signals import raise_if_interrupted, signals_deferred
from harness.tracking import MLFLOW_TABLES, check_database, sqlalchemy_url, sqlite_tables, url_scheme

DEFAULT_JOURNAL = Path("runs") / "studies.journal"
HEARTBEAT_INTERVAL_S = 15
GRACE_PERIOD_S = 90  # several missed heartbeats: a busy machine is not a dead worker
# Optuna's shortest grace period without a warning. A journal lock found while holding
# `KernelGuardedLock`'s guard is a dead process's or a millisecond append of a plain Optuna one.
STALE_JOURNAL_LOCK_S = 3
OWNER_ATTR = "gorl:owner"  # trial system attr: {"host", "pid", "beat"}
# Trial user attrs of a grid or compare unit's attempt that repeats an earlier one (a lost
# worker's, or a failed one's); either may resume its checkpoint mid-way.
RETRY_ATTRS = frozenset({"retry_of", "rerun_of"})
# Trial user attr of a running grid or compare unit: {"step", "seconds"}, the counted env steps of
# its last evaluation and the seconds since its claim when it was made (`study status`'s ETA).
PROGRESS_ATTR = "progress"


def storage_location(location: str | None) -> str:
    """The storage as a string a worker on this machine can open: an RDB URL or an absolute path."""

    if location and "://" in location:
        return sqlalchemy_url(location)
    return str(Path(location or DEFAULT_JOURNAL).resolve())


class StudyNotFound(UserError):
    """The storage does not exist, or holds no study of that name (as opposed to one that cannot be
    read: a damaged journal, a database that cannot be reached)."""


def _check_lockable_server(url: str) -> None:
    """Refuse a database server on which `serialized` can take no lock (anything but PostgreSQL).

    Without it two workers could both propose trial n of a tune study, both find the trial budget
    not yet spent, or both create a new study; only the claim of a grid unit would stay atomic.
    """

    scheme = url_scheme(url)
    if scheme != "postgresql":
        raise UserError(
            f"the study storage {url} is a {scheme} database: a study shared by several machines needs "
            "PostgreSQL (postgresql://...), whose advisory lock orders the workers' claims, proposals "
            "and sweeps; on one machine, use the journal (the default) or sqlite:///PATH."
        )


def open_storage(location: str | None, *, create: bool = True) -> BaseStorage:
    """Open (creating if needed) the storage at `location`; None means the embedded journal file.

    Without `create` (commands that only read a study), an SQLite file that holds no study
    storage is `StudyNotFound`, and nothing is written to it.
    """

    location = storage_location(location)
    if "://" in location:
        from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

        if location.startswith("sqlite"):
            check_sqlite_storage(location, create=create)
        else:
            _check_lockable_server(location)
            check_database(location, "the study storage")

        # Two processes opening a fresh database race to create Optuna's tables; the loser
        # sees a "duplicate" error and succeeds on a later try, once the tables exist.
        for attempt in range(4):
            try:
                with _quiet_experimental():
                    return RDBStorage(
                        location,
                        engine_kwargs={"pool_pre_ping": True},
                        heartbeat_interval=HEARTBEAT_INTERVAL_S,
                        grace_period=GRACE_PERIOD_S,
                    )
            except (IntegrityError, ProgrammingError) as error:
                last = error
                time.sleep(1.0 + attempt)
            except SQLAlchemyError as error:
                last = error
                break
        reason = first_line(last)
        raise UserError(f"cannot open the study storage {location}: {reason}")
    path = Path(location)
    _check_journal(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(UninterruptedJournal(str(path)))
    except OSError as error:  # a read-only file system, a directory that cannot hold files
        raise UserError(f"cannot open the study journal {location}: {error.strerror}.") from None
    except (ValueError, AssertionError, KeyError, TypeError) as error:
        # Optuna replays the whole log on opening; a damaged line fails there with a decoding
        # error or a failed assertion on an unknown operation.
        raise UserError(
            f"the study journal {location} is damaged and cannot be read ({type(error).__name__}: {error}). "
            "Pass the --storage a study was run with, or a path that does not exist yet for a new one."
        ) from None


class UninterruptedJournal(JournalFileBackend):
    """A journal file whose appends finish before Ctrl-C or `kill` take effect.

    An append holds Optuna's file lock. Interrupted inside it, a worker could leave the lock
    behind (every process then waits out Optuna's 30 s grace period), print a traceback from the
    lock's own cleanup, or, while still waiting for the lock, remove another process's lock. An
    append that fails (a full disk) is a `UserError` naming the journal. A `kill -9`, which no
    handler defers, is what `KernelGuardedLock` is for.
    """

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, KernelGuardedLock(file_path))
        self.path = Path(file_path)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        try:
            with signals_deferred():
                super().append_logs(logs)
        except OSError as error:  # a full disk: one line, not a traceback from every process
            raise UserError(f"cannot write the study journal {self.path}: {error.strerror}.") from None


class KernelGuardedLock:
    """Optuna's lock of a journal file (a symbolic link beside it), taken while holding an `flock`
    on `JOURNAL.append-lock`. (A lock object to Optuna: `acquire` and `release`. Not a subclass
    of Optuna's lock, whose `acquire` calls `release` to remove a stale link.)

    A process killed while it holds Optuna's lock leaves the link, and every other process waits
    out Optuna's 30 s grace period before it removes it. The kernel releases an `flock` when its
    holder dies, and every gorl-bench process holds it while it holds the link: one that holds it
    and still finds the link knows its owner is dead, or is a plain Optuna process (the `optuna`
    command's `delete-study`), which holds it for milliseconds. So it waits seconds, not 30.
    The link is still taken, for such Optuna processes.
    """

    def __init__(self, journal: str) -> None:
        self._guard_path = journal + ".append-lock"
        self._link = JournalFileSymlinkLock(journal, grace_period=STALE_JOURNAL_LOCK_S)
        # The open guard file while the lock is held: one holder per process at a time, as
        # Optuna's JournalStorage lets one of its threads append at a time.
        self._guard: Any = None

    def acquire(self) -> bool:
        guard = open(self._guard_path, "a")  # noqa: SIM115 - closed in release, or below on an error
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            self._link.acquire()
        except BaseException:
            guard.close()  # drops the flock
            raise
        self._guard = guard
        return True

    def release(self) -> None:
        try:
            self._link.release()
        finally:
            self._guard.close()
            self._guard = None


def check_storage_file(path: Path, shown: str, expected: str) -> None:
    """A storage file that exists must be a regular file: a directory cannot hold a journal or a
    database, a device such as /dev/null loses what is written to it, and a pipe blocks its reader."""

    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise UserError(f"the study storage {shown} is {what}; pass {expected}.")


def _check_journal(path: Path) -> None:
    """Refuse a path that is not an Optuna journal file before Optuna reads it, or appends to it:
    opening any existing file as a journal wrote the new study's records into it."""

    check_storage_file(
        path,
        str(path),
        f"a journal file path (default {DEFAULT_JOURNAL}) or an RDB URL (postgresql://...)",
    )
    try:
        with path.open("rb") as handle:
            first = handle.readline(1 << 16)  # a journal's first record, the study's creation, is short
    except FileNotFoundError:
        return  # a new journal
    except OSError as error:
        raise UserError(f"cannot read the study journal {path}: {error.strerror or error}.") from None
    if not first:
        return  # an empty file is an empty journal
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and "op_code" in record):
        raise UserError(
            f"{path} is not an Optuna journal file (its first line is not a journal record), so it is left "
            "untouched. Pass the --storage a study was run with, or a path that does not exist yet for a "
            "new one."
        )
    intact = _intact_length(path)
    if intact is not None:
        time.sleep(0.5)  # perhaps another process's record, read while it was being written
        intact = _intact_length(path)
    if intact is not None:
        size = path.stat().st_size
        raise UserError(
            f"the study journal {path} ends in an incomplete record ({size - intact} bytes after the last "
            "complete one: a write cut short by a crash or a full disk); anything added after it would make "
            "the whole journal unreadable, so it is left untouched. Keep a copy, then drop the incomplete "
            f"end: truncate -s {intact} {path}"
        )


def check_sqlite_storage(location: str, *, create: bool) -> None:
    """Refuse an SQLite file that is not a study storage before Optuna opens it: Optuna adds its
    tables to any database, even to read it, and in an MLflow tracking store (whose schema version
    table Optuna takes for its own) then fails, advising to upgrade Optuna. The file's tables are
    read with sqlite3, read-only."""

    path = sqlite_file(location)
    if path is None:
        return  # not an SQLite file: in memory, a journal, another database, a URL Optuna refuses
    check_storage_file(
        path, location, "an SQLite study storage, or a path that does not exist yet for a new one"
    )
    if not path.exists():
        return  # a new storage (`load_study` refuses a missing one before opening it)
    tables = _sqlite_tables(path, location)
    if tables >= MLFLOW_TABLES:
        raise UserError(
            f"{location} is an MLflow tracking store, not a study storage, so it is left untouched. Pass "
            f"it as --tracking-uri, and as --storage a study journal (default {DEFAULT_JOURNAL}) or a "
            "database of its own."
        )
    if "studies" in tables:
        return  # Optuna's
    if not create:
        raise StudyNotFound(
            f"no studies in {location}: it holds no study storage (nothing was written to it). Pass the "
            "--storage a study was run with."
        )
    if tables:
        names = ", ".join(sorted(tables)[:5])
        raise UserError(
            f"{location} is an SQLite database of something else (tables {names}), not a study storage, "
            "so it is left untouched. Pass the --storage a study was run with, or an empty or new file "
            "for a new one."
        )


def sqlite_file(location: str) -> Path | None:
    """The file of an SQLite storage URL, parsed as SQLAlchemy opens it (a driver such as
    `sqlite+pysqlite`, a `?query`, relative paths); None for anything else. (A tracking URI is
    always `sqlite:///PATH`: `harness.tracking.sqlite_path`.)"""

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not location.startswith("sqlite"):
        return None  # a journal file, or another database
    try:
        database = make_url(location).database
    except ArgumentError:
        return None
    return Path(database) if database and database != ":memory:" else None


def _sqlite_tables(path: Path, location: str) -> set[str]:
    """The names of the tables in the SQLite file at `path`, read without writing anything."""

    import sqlite3

    try:
        return sqlite_tables(path)
    except sqlite3.DatabaseError as error:  # not a database, or one this user may not read
        raise UserError(
            f"cannot read the study storage {location} as an SQLite database ({error}), so it is left "
            "untouched. Pass the --storage a study was run with, or a path that does not exist yet for a "
            "new one."
        ) from None


def _intact_length(path: Path) -> int | None:
    """None when the journal ends with a complete record, else the length up to its last complete one.

    Optuna skips a torn last line when it reads the journal, but appends the next record right
    after it: the two then form one undecodable line in the middle, which fails every later read.
    """

    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - (1 << 20)))  # records are short: the last MiB holds the last few
        tail = handle.read()
    *lines, torn = tail.split(b"\n")  # `torn`: what follows the last newline, b"" if nothing
    end = size - len(torn)
    # Back to the last record that decodes, over the lines that do not: NUL bytes (a crash on
    # some file systems), a garbled record, blank lines (each of which Optuna also fails to read).
    for line in reversed(lines[1:] if size > len(tail) else lines):  # not a line cut by the window
        try:
            json.loads(line)
            return None if end == size else end
        except ValueError:
            end -= len(line) + 1
    return size - len(torn) - (len(lines[-1]) + 1 if lines else 0)  # none in the window: the last line


def claim_waiting_trial(
    study: optuna.Study, allowed: Callable[[], bool] = lambda: True
) -> optuna.Trial | None:
    """Atomically take one WAITING (enqueued) trial, or None when none is left or `allowed()`
    (the study's budget, checked under the same lock as the claim) says no.

    Unlike `study.ask()`, this never creates a new trial: a grid study's units are exactly
    the enqueued ones. Retries of lost units and reruns of failed ones come first: the attempt
    each replaces counted against `max_trials`, so under that limit a unit that never ran would
    otherwise take its place, and the retry would wait for ever.
    """

    storage = study._storage
    with serialized(storage):
        if not allowed():
            return None
        for trial in in_claim_order(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
            # The owner is written with the claim, and Ctrl-C waits until both are stored: a trial
            # RUNNING without an owner is recognised as lost only after the grace period, so an
            # interrupt between the two writes would keep a rerun from retrying it for that long.
            with signals_deferred():
                try:
                    claimed = storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
                except UpdateFinishedTrialError:
                    continue  # finished by someone else between listing and claiming
                if claimed:
                    _own(storage, trial._trial_id)
                    return optuna.Trial(study, trial._trial_id)
    return None


def in_claim_order(waiting: list[FrozenTrial]) -> list[FrozenTrial]:
    """The WAITING trials in the order workers claim them: retries and reruns, then the rest, each
    in trial order."""

    return sorted(waiting, key=lambda t: not (RETRY_ATTRS & t.user_attrs.keys()))


# A new trial's (params, system attrs), given the study's trials; None: not yet, ask again later.
Proposer = Callable[[list[FrozenTrial]], tuple[dict[str, Any], dict[str, Any]] | None]
# How often `ask_owned` looks again whether its proposer can propose.
PROPOSE_POLL_S = 1.0
_NOT_YET = object()


def ask_owned(
    study: optuna.Study, allowed: Callable[[], bool] = lambda: True, propose: Proposer | None = None
) -> optuna.Trial | None:
    """`study.ask()` (a re-enqueued lost trial first, else a new one), with this process written
    as its owner at once, as `claim_waiting_trial` does; None when `allowed()` (checked under the
    same lock) says no.

    With `propose`, a new trial takes the params it returns from the trials so far, read under the
    lock, so that no other worker adds a trial in between. While it says "not yet" the call waits,
    sweeps for lost units (one of them may be what it waits for) and asks again.
    """

    while (trial := _ask_now(study, allowed, propose)) is _NOT_YET:
        time.sleep(PROPOSE_POLL_S)
        raise_if_interrupted()  # one dropped inside a garbage-collection callback (harness.signals)
        sweep_lost_units(study)
    return trial  # type: ignore[return-value]


def _ask_now(study: optuna.Study, allowed: Callable[[], bool], propose: Proposer | None) -> Any:
    """One try of `ask_owned`: the trial, None (not allowed) or `_NOT_YET` (the proposer waits)."""

    with serialized(study._storage), signals_deferred():
        if not allowed():
            return None
        attrs: dict[str, Any] = {}
        if propose is not None:
            trials = study.get_trials(deepcopy=False)
            if not any(t.state == TrialState.WAITING for t in trials):  # a lost trial's retry goes first
                proposal = propose(trials)
                if proposal is None:
                    return _NOT_YET
                params, attrs = proposal
                study.enqueue_trial(params)
        trial = study.ask()
        _own(study._storage, trial._trial_id)
        for key, value in attrs.items():
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
        return trial


@contextmanager
def serialized(storage: BaseStorage) -> Iterator[None]:
    """Run the body alone among the processes using the storage: on one machine for a storage
    file (journal or SQLite), on every machine for a PostgreSQL database.

    Held by the steps that read the study and then write on what they read: a claim, a sweep for
    lost units, creating a study and enqueueing its units. On an SQLite file Optuna's row lock
    (SELECT ... FOR UPDATE) is a no-op: two workers both read a trial WAITING and both moved it
    to RUNNING (4 workers claiming 200 trials made 229 claims), and two sweeps both re-enqueued
    one lost trial. On any storage, two `study run`s of a new study started at once both found no
    study, so each created a parent MLflow run (one stayed RUNNING, empty) and enqueued every
    unit. Other database servers are refused when the storage is opened.
    """

    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in a cache
    if isinstance(backend, RDBStorage) and backend.engine.dialect.name == "postgresql":
        lock = _database_lock(backend)
    else:
        path = (
            backend.path
            if isinstance(backend, UninterruptedJournal)
            else sqlite_file(getattr(backend, "url", ""))
        )
        lock = _file_lock(path) if path else nullcontext()
    with lock:
        yield


# The advisory lock's key: any 64-bit number no other program on the database uses. One for all
# the studies in a database: the bodies it orders take milliseconds.
_ADVISORY_LOCK_KEY = 0x676F726C_6C6F636B  # "gorllock"
_LOCK_POLL_S = 0.05


@contextmanager
def _database_lock(storage: RDBStorage) -> Iterator[None]:
    """A PostgreSQL advisory lock held by a transaction of its own, open while the body runs on
    Optuna's other connections: released at its end, and by the server when a crash drops the
    connection. Taken by polling, not by a blocking call, so that Ctrl-C stops a process waiting
    for it. Not reentrant, as the file lock."""

    import sqlalchemy

    take = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)")
    with storage.engine.begin() as connection:
        while not connection.execute(take, {"key": _ADVISORY_LOCK_KEY}).scalar():
            time.sleep(_LOCK_POLL_S)
        yield


@contextmanager
def _file_lock(storage_file: Path) -> Iterator[None]:
    """An exclusive lock on `PATH.study-lock` next to the storage file (not on the file itself:
    closing any descriptor of a database file drops SQLite's own locks on it). A local lock
    suffices: neither SQLite nor the journal is safe on a network file system anyway. Not
    reentrant: a process that takes it twice waits for ever."""

    path = storage_file.with_name(storage_file.name + ".study-lock")
    try:
        lock = open(path, "a")  # noqa: SIM115 - closed below, after the body
    except OSError as error:
        raise UserError(
            f"cannot create the lock file {path} next to the study storage: {error.strerror}."
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, even by a crash
        yield


def _own(storage: BaseStorage, trial_id: int) -> None:
    """Write this process as the owner of the trial it just claimed, and on an RDB storage its
    first heartbeat: Optuna's sweep finds a trial stale only by its heartbeats, so a worker on
    another host that died before its first beat would have left the trial RUNNING for ever."""

    storage.set_trial_system_attr(trial_id, OWNER_ATTR, _owner())
    if _has_optuna_heartbeats(storage):
        storage.record_heartbeat(trial_id)


def _owner() -> dict[str, Any]:
    """This process as a trial's owner, with the time of its latest heartbeat."""

    return {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()}


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int) -> Iterator[threading.Event]:
    """Keep this process's heartbeat on the trial it claimed while the body runs (the claim wrote
    it as the owner: `claim_waiting_trial`, `ask_owned`).

    Yields an event that a beat sets when the claim is gone (see `owns`): a worker silent for
    longer than the grace period (a suspended machine, a storage outage) was taken for dead by
    another worker's sweep, which re-queued its unit. The body should stop the unit then; the
    heartbeat stops too.
    """

    storage = study._storage
    stop = threading.Event()
    lost = threading.Event()

    def beat() -> None:
        if not owns(study, trial_id):
            lost.set()
        elif _has_optuna_heartbeats(storage):
            storage.record_heartbeat(trial_id)
        else:
            storage.set_trial_system_attr(trial_id, OWNER_ATTR, _owner())

    beat()

    def loop() -> None:
        while not lost.is_set() and not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                beat()
            except Exception:  # noqa: BLE001 - a blip (the storage unreachable); the next beat retries
                continue

    thread = threading.Thread(target=loop, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join()


def owns(study: optuna.Study, trial_id: int) -> bool:
    """Whether the trial is still RUNNING and recorded as this process's claim; false once a sweep,
    on any machine, failed it as lost."""

    trial = study._storage.get_trial(trial_id)
    owner = trial.system_attrs.get(OWNER_ATTR)
    mine = owner is None or (owner["host"], owner["pid"]) == (socket.gethostname(), os.getpid())
    return trial.state == TrialState.RUNNING and mine


def sweep_lost_units(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue the RUNNING trials whose worker is gone; returns their numbers."""

    with serialized(study._storage):
        return _sweep(study)


def _sweep(study: optuna.Study) -> list[int]:
    storage = study._storage
    # Not Optuna's `fail_stale_trials`: it fails every silent trial, a live worker's on this host too.
    silent = _silent_trials(study)
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _lost_reason(trial, silent=silent)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker lost: {reason}")
            storage.set_trial_user_attr(trial._trial_id, "lost", True)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished after all, or another sweep got there first
        retry_lost_trial(study, storage.get_trial(trial._trial_id))
        lost.append(trial.number)
    return lost


def retry_lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the lost trial's parameters (its unit, or a tune trial's sampled values) again."""

    _enqueue_again(study, trial, "retry_of")


def rerun_failed_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a unit (tune: a configuration) that failed on its own again; the rerun replaces it."""

    _enqueue_again(study, trial, "rerun_of")


# What a trial enqueued again keeps of the trial it repeats: its unit, and whether it is the rerun
# of a failed unit (a diverged unit's rerun must not resume, even when a retry repeats the rerun).
_CARRIED_ATTRS = ("unit", "variant", "algo", "task", "seed", "rerun_of")


def _enqueue_again(study: optuna.Study, trial: FrozenTrial, link: str) -> None:
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    carried = {k: v for k, v in trial.user_attrs.items() if k in _CARRIED_ATTRS}
    # `study.enqueue_trial`, keeping what the sampler and the pruner recorded on the trial (CMA-ES:
    # its generation), as the repeat stands in for it in later proposals (`studies.proposals`).
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k != OWNER_ATTR}
    study.add_trial(
        create_trial(
            state=TrialState.WAITING,
            system_attrs={**system_attrs, "fixed_params": params},
            user_attrs={**carried, link: trial.number},
        )
    )


def rerun_trials(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that a rerun replaced (`study run --retry-failed` or
    `--retry-diverged`): like lost attempts, they no longer count as the study's result or against
    its trial budget.

    A finished trial cannot be marked any more, so the rerun records what it replaces.
    """

    return {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that make the study's result and count against its budget: all but lost attempts,
    failed trials that a rerun replaced, and duplicates of a unit that another trial runs."""

    replaced = rerun_trials(trials)
    return [
        t
        for t in trials
        if not is_lost(t) and t.number not in replaced and "duplicate_of" not in t.user_attrs
    ]


def trial_label(trial: FrozenTrial) -> str:
    """How reports name a trial: its unit ("variant|task|seedN"), or a tune trial's variant ("trial-N")."""

    return trial.user_attrs.get("unit") or trial.user_attrs.get("variant") or f"trial-{trial.number}"


# Why a unit (tune: a trial) failed on its own, as the worker records it in the `failure` user attr.
ERROR = "error"  # an exception: a full disk, a directory in use, CUDA out of memory; a rerun may succeed
DIVERGED = "diverged"  # a non-finite loss or score: on the same code and machine its seed diverges again
INVALID = "invalid"  # a sampled tune combination that the configuration refuses: refused again


def failure_kind(trial: FrozenTrial) -> str:
    """ERROR, DIVERGED or INVALID for a trial that failed on its own (not a lost one)."""

    kind = trial.user_attrs.get("failure")
    if kind is None:  # a trial failed before failure kinds were recorded
        diverged = str(trial.user_attrs.get("fail_reason", "")).startswith("DivergedError")
        kind = DIVERGED if diverged else ERROR
    return kind


def is_alive(study: optuna.Study, trial: FrozenTrial) -> bool:
    """A RUNNING trial that `sweep_lost_units` leaves alone: its worker is taken to be at work."""

    return trial.state == TrialState.RUNNING and _lost_reason(trial, silent=_silent_trials(study)) is None


def is_lost(trial: FrozenTrial) -> bool:
    """A FAILED trial whose worker died (and which was retried), as opposed to a unit that failed.

    Trials that Optuna's RDB heartbeat check failed (studies swept before 2026-12-02) carry no
    reason of ours; a unit that failed on its own always has `fail_reason` and no `lost` mark.
    """

    return trial.state == TrialState.FAIL and (
        bool(trial.user_attrs.get("lost")) or "fail_reason" not in trial.user_attrs
    )


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Optuna marks its heartbeats experimental; they are what multi-host recovery needs."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _has_optuna_heartbeats(storage: BaseStorage) -> bool:
    """True for RDB storages (as Optuna wraps them: in a cache), which keep a heartbeat table."""

    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def _silent_trials(study: optuna.Study) -> set[int] | None:
    """On RDB, the ids of the RUNNING trials whose heartbeat in Optuna's table is older than the
    grace period (by the database's clock); None on the journal, where the owner attribute keeps
    the beat."""

    storage = study._storage
    if not _has_optuna_heartbeats(storage):
        return None
    return set(storage._get_stale_trial_ids(study._study_id))


def _lost_reason(trial: FrozenTrial, *, silent: set[int] | None) -> str | None:
    """Why a RUNNING trial's worker is taken for gone, or None while it is taken to be at work;
    `silent` as `_silent_trials` gives it."""

    owner = trial.system_attrs.get(OWNER_ATTR)
    now = time.time()
    if owner is None:
        # Claimed but the owner not yet written: only a long silence means the claimer died.
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return (
            f"no owner recorded {now - started:.0f} s after the claim"
            if now - started > GRACE_PERIOD_S
            else None
        )
    if worker_gone_here(trial):
        return f"process {owner['pid']} on {owner['host']} is gone"
    if owner["host"] == socket.gethostname():
        # A process here is asked directly. Its heartbeat may be old while it is alive: after a
        # suspend, a sweep can run before its first beat, and a retry would then find the unit's
        # directory still held by it.
        return None
    if silent is None and now - owner["beat"] > GRACE_PERIOD_S:
        return f"no heartbeat from {owner['host']} (pid {owner['pid']}) for {now - owner['beat']:.0f} s"
    if silent is not None and trial._trial_id in silent:
        return f"no heartbeat from {owner['host']} (pid {owner['pid']}) for over {GRACE_PERIOD_S} s"
    return None


def worker_gone_here(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker was a process on this host that is gone (Ctrl-C, a crash):
    the next sweep (`study run`, a worker's start) retries its unit."""

    owner = trial.system_attrs.get(OWNER_ATTR)
    return owner is not None and owner["host"] == socket.gethostname() and not _process_alive(owner["pid"])


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child not yet reaped by its parent is a zombie: dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
