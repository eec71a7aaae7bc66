"""Background training jobs: ``seqgan train`` as a child process in its own session, found again on disk.

A job is one process ``python -m seqgan --threads N train --run-dir runs/<id> ...`` started with
``start_new_session=True``: it has its own process group, so stopping it (SIGTERM to the group) reaches
everything it started, and a Ctrl-C or a restart of the app does not reach it. The trainer writes status.json,
metrics.jsonl and the checkpoints of the run directory atomically; this module adds

    job.json     what was started: pid, command, device, threads, time, whether a stop was asked for
    output.txt   the process's stdout and stderr (corpus-reading progress, then one line per unit)

Nothing is kept only in memory, so a browser refresh or a new app server finds every job again: a job is alive
while its pid runs and that process's command line names its run directory (so a reused pid is not taken for
the job). One job runs per device at a time: per GPU (``cuda:0``, ``cuda:1`` ...) on a GPU machine, one on a
CPU-only machine (the trainer uses the CPU fully; two jobs would each run at half speed or worse).

States (``job_state``): preparing (process alive, trainer not started yet: reading the corpus, training the
tokenizer), running, stopping (SIGTERM sent; the trainer finishes its unit and checkpoints), stopped, finished,
failed (its error recorded, or printed when even that could not be written, as on a full disk), interrupted
(status says running but the process is gone: killed or the machine restarted). Stopped, failed and interrupted
runs resume from the last checkpoint (a failed one once its cause is mended: resuming checks everything again).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import SeqGANError
from .runs import RunDir

RUNS_ENV = "SEQGAN_RUNS_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIVE = ("preparing", "running", "stopping")
RESUMABLE = ("stopped", "interrupted", "failed")  # a failed run may be tried again: resuming checks everything

_children: dict[int, subprocess.Popen] = {}  # processes this app process started, reaped when they end
_ended: dict[int, int] = {}  # their exit statuses once reaped (negative: the signal that ended them)


class JobError(SeqGANError):
    """A job cannot be started, stopped or resumed (the message says why)."""


def runs_root() -> Path:
    """Where runs live: ``$SEQGAN_RUNS_DIR``, else ``runs/`` under the working directory."""
    return Path(os.environ.get(RUNS_ENV) or "runs").resolve()


def device_slots() -> list[str]:
    """The devices a job can run on, one job each: every GPU, or the CPU when there is none."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


# ----- one job --------------------------------------------------------------------------------------------------
def read_job(run: RunDir) -> dict | None:
    return run.read_json(run.job)


def process_alive(pid: int | None, run: RunDir) -> bool:
    """Whether ``pid`` is running (not a zombie) and is the job of ``run`` (its command line names the run)."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:  # started by this app: unreaped, its pid cannot be another process's
        if child.poll() is None:
            return _names_run([str(arg).encode() for arg in child.args], os.getcwd(), run)
        _children.pop(pid, None)  # (two sessions' threads may both get here)
        _ended[pid] = child.returncode
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user: /proc decides below
    proc = Path("/proc") / str(pid)
    if not proc.exists():
        return True  # no /proc (not Linux): trust the pid
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            _reap(pid)
            return False
        command = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    try:
        cwd = os.readlink(proc / "cwd")
    except OSError:
        cwd = None
    return _names_run(command, cwd, run)


def _names_run(command: list[bytes], cwd: str | None, run: RunDir) -> bool:
    """Whether an argument of ``command`` (run in ``cwd``) is the run's directory, e.g. a terminal's
    ``seqgan train --run-dir runs/r1``."""
    target = run.path.resolve()
    for arg in command:
        try:
            path = Path(arg.decode())
        except UnicodeDecodeError:
            continue
        if not arg or (not path.is_absolute() and cwd is None):
            continue
        try:
            if (path if path.is_absolute() else Path(cwd) / path).resolve() == target:
                return True
        except (OSError, RuntimeError):
            continue
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class JobState:
    state: str            # see the module docstring; "" when the directory holds no run
    alive: bool           # the process is running
    pid: int | None
    device: str | None
    message: str = ""     # why it failed, or what it is doing while preparing
    slots: tuple[str, ...] = ()  # every device the run holds: ``device``, or one per local rank under torchrun

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE


def job_state(run: RunDir) -> JobState:
    """The state of a run, from its files and whether its process is still alive."""
    job = read_job(run) or {}
    status = run.read_status() or {}
    pid = job.get("pid") or status.get("pid")
    alive = process_alive(pid, run)
    if not alive:  # another process may train it: a terminal's seqgan train --resume holds the run's .lock
        holder = run.lock_holder()
        if holder not in (None, pid) and process_alive(holder, run):
            pid, alive, job = holder, True, {}
    device = job.get("device") or status.get("device")  # a run started from a terminal has no job.json
    # the app starts one process on one device; a terminal's torchrun run holds one GPU per local rank
    slots = tuple((status.get("devices") if not job else None) or ([device] if device else []))
    recorded = status.get("state", "")
    # a status written by this job's process (not one left from before a resume)
    fresh = status.get("pid") == pid and status.get("updated", 0) >= job.get("started", 0)

    def made(state: str, message: str = "") -> JobState:
        return JobState(state, alive, pid, device, message, slots)

    if alive:
        if fresh and recorded in ("finished", "failed"):
            return made(recorded, "the process is exiting")
        if job.get("stop_requested") or (fresh and recorded == "stopped"):
            return made("stopping", "finishing the current unit, then saving a checkpoint")
        if fresh and recorded == "running":
            return made("running")
        return made("preparing", _last_output_line(run) or "starting")
    if job and job.get("started", 0) > status.get("updated", 0):
        # the process the app started ended before its trainer wrote a status
        if job.get("stop_requested"):
            return made("stopped", "stopped before training started")
        return made("failed", _error_from_output(run, pid))
    if recorded == "running":
        error = _error_line(run) if fresh else None
        if error:  # it ended on an error it could not even record (the disk full: status.json not rewritten)
            return made("failed", error)
        killed = " (killed: SIGKILL, perhaps for lack of memory)" if _ended.get(pid, 0) == -signal.SIGKILL else ""
        return made("interrupted", f"the process ended without saving{killed}; resume continues from the last "
                                   f"checkpoint")
    if recorded == "failed":
        return made("failed", status.get("error") or _error_from_output(run))
    return made(recorded)


def _latest_attempt_output(run: RunDir, lines: int) -> list[str]:
    """The non-blank lines among the last ``lines`` of output.txt written by the latest process (``start`` heads
    each attempt's output with a "--- " line)."""
    tail = run.tail(run.output, lines)
    starts = [i for i, line in enumerate(tail) if line.startswith("--- ")]
    return [line for line in tail[starts[-1] + 1 if starts else 0:] if line.strip()]


def _last_output_line(run: RunDir) -> str:
    lines = _latest_attempt_output(run, 5)
    return lines[-1] if lines else ""


def _error_line(run: RunDir) -> str | None:
    """The last ``error: ...`` line the latest attempt printed (the command line's way to fail), if any."""
    errors = [line for line in _latest_attempt_output(run, 40) if line.startswith("error:")]
    return errors[-1][len("error:"):].strip() if errors else None


def _error_from_output(run: RunDir, pid: int | None = None) -> str:
    error = _error_line(run)
    if error:
        return error
    how, early = "the process ended", " early"
    status = _ended.get(pid, 0)  # known while the app that started the job runs
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        how = f"the process was killed ({name}{', perhaps for lack of memory' if -status == signal.SIGKILL else ''})"
        early = ""
    lines = _latest_attempt_output(run, 40)
    return f"{how}{early}: {lines[-1]}" if lines else f"{how} before writing anything"


# ----- starting and stopping ------------------------------------------------------------------------------------
def train_command(run: RunDir, *, threads: int = 1, resume: bool = False, args: list[str] | tuple = ()) -> list[str]:
    """``python -m seqgan --threads N train --run-dir DIR [--resume] ARGS``."""
    command = [sys.executable, "-m", "seqgan", "--threads", str(int(threads)), "train", "--run-dir", str(run.path)]
    return command + (["--resume"] if resume else []) + [str(a) for a in args]


@contextmanager
def _jobs_lock(root: Path):
    """Serialise 'find a free device, then start' across app sessions and processes."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".jobs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def active_runs(root: Path | None = None) -> list[tuple[RunDir, JobState]]:
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        run = RunDir(path)
        if path.is_dir() and run.exists():
            state = job_state(run)
            if state.active:
                found.append((run, state))
    return found


def free_device(root: Path | None = None, wanted: str = "auto") -> str:
    """A device with no job on it (``wanted`` if given and free); JobError naming the busy run otherwise."""
    slots = device_slots()
    if wanted not in ("auto", "", None):
        wanted = "cuda:0" if wanted == "cuda" else wanted
        if wanted.startswith("cuda") and wanted not in slots:
            raise JobError(f"device {wanted} was asked for but this machine has "
                           f"{', '.join(s for s in slots if s != 'cpu') or 'no CUDA GPU'}")
        slots = [wanted]
    busy = {slot: run.name for run, state in active_runs(root) for slot in (state.slots or ("cpu",))}
    if "cpu" in busy and slots == ["cpu"]:
        raise JobError(f"run {busy['cpu']} is already training on this machine; stop it or wait until it "
                       "finishes (one job at a time on a CPU-only machine)")
    for slot in slots:
        if slot not in busy:
            return slot
    names = ", ".join(f"{busy[s]} on {s}" for s in slots if s in busy)
    raise JobError(f"every device is busy ({names}); stop a run or wait until one finishes")


def start(run: RunDir, args: list[str] | tuple = (), *, threads: int = 1, device: str = "auto",
          resume: bool = False, meta: dict | None = None, before: Callable[[], None] | None = None) -> JobState:
    """Start (or with ``resume`` continue) the run in the background on a free device. ``before`` runs once the
    start is certain (the run idle, a device free), just before the process starts."""
    root = run.path.parent
    with _jobs_lock(root):
        current = job_state(run)
        if current.active or current.alive:
            raise JobError(f"run {run.name} is still {current.state} (its process is running); "
                           "wait a moment and try again" if not current.active else
                           f"run {run.name} is already {current.state}")
        if resume and not run.config.is_file():
            raise JobError(f"run {run.name} cannot be resumed: it never got past reading its data "
                           f"({current.message or 'no config.json'}); start a new run instead")
        if not resume and run.config.is_file():
            raise JobError(f"run {run.name} already exists; resume it or start a new run")
        slot = free_device(root, device)
        if before is not None:
            before()
        run.path.mkdir(parents=True, exist_ok=True)
        command = train_command(run, threads=threads, resume=resume, args=list(args) + ["--device", slot])
        env = dict(os.environ, SEQGAN_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p))
        with open(run.output, "ab") as output:
            output.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command[1:])}\n".encode())
            output.flush()
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=os.getcwd(), start_new_session=True)
        _children[process.pid] = process
        previous = read_job(run) or {}
        job = {"created": previous.get("created", time.time()), "pid": process.pid, "command": command, "device": slot,
               "threads": int(threads), "started": time.time(), "resumed": bool(resume),
               "meta": {**previous.get("meta", {}), **(meta or {})}}
        run.write_json(run.job, job)
    return job_state(run)


def stop(run: RunDir, force: bool = False) -> JobState:
    """SIGTERM to the job's process group: the trainer finishes its unit, saves latest.pt and says 'stopped'.
    ``force`` sends SIGKILL (the run resumes from its last checkpoint)."""
    state = job_state(run)
    if not state.alive:
        raise JobError(f"run {run.name} is not running ({state.state or 'no job'})")
    job = read_job(run) or {}
    ours = job.get("pid") == state.pid  # a job this app started, not a process from a terminal
    if ours:
        job.update(stop_requested=True, stop_time=time.time())
        run.write_json(run.job, job)
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        if ours:
            os.killpg(state.pid, sig)  # the app's jobs lead their own group: reach all of it
        else:
            os.kill(state.pid, sig)  # a run started elsewhere: only its process (its group may hold a shell's tee)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise JobError(f"run {run.name}: not allowed to stop process {state.pid} ({exc})") from None
    return job_state(run)


def wait(run: RunDir, states=("stopped", "finished", "failed", "interrupted"), timeout: float = 60.0) -> JobState:
    """Poll until the run reaches one of ``states`` (used by tests and scripts)."""
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(run)
        if state.state in states or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def job_meta(run: RunDir) -> dict:
    return (read_job(run) or {}).get("meta", {})
