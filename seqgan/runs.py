"""Run directories: where a training run keeps everything, so the CLI and the app read the same files.

    runs/<id>/
        config.json      everything needed to rerun (written once, atomically)
        status.json      state, unit, units, phase, step, device(s), pid, times (rewritten atomically)
        metrics.jsonl    one event per line (the trainer's callback events, appended)
        checkpoints/     latest.pt, mle.pt (the MLE baseline), seqgan.pt (end of adversarial training)
        samples/         generated sequences at evaluation points
        log.txt          human-readable log
        train.txt        the training sequences, token ids (what the run trains on; a resume reads them again)
        heldout.txt      the held-out sequences, token ids (NLL-test, BLEU references)
        tokenizer.bin    the corpus's tokenizer (text or melody runs)
        oracle.pt        the oracle (oracle runs of ``seqgan train``)
        job.json         written by the app when it starts the run in the background (``seqgan.jobs``)
        output.txt       that background process's stdout and stderr
        .lock            held (flock) by the one process training the run, with its pid (``RunDir.claim``)
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from .checkpoint import atomic_write_bytes
from .errors import InputError, SeqGANError

_claimed: dict[Path, int] = {}  # run directories this process trains: resolved path -> its open .lock


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)  # an open file's inode is never reused while open


class RunInUse(SeqGANError):
    """Another process is training this run directory."""


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.status = self.path / "status.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.samples = self.path / "samples"
        self.log = self.path / "log.txt"
        self.job = self.path / "job.json"
        self.output = self.path / "output.txt"
        self.train_data = self.path / "train.txt"
        self.lock = self.path / ".lock"

    @property
    def name(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        """A run directory: one the trainer wrote (config.json) or the app started (job.json)."""
        return self.config.is_file() or self.job.is_file()

    def read_config(self) -> dict | None:
        """config.json as written by ``seqgan train``: ``{"config": {...}, "task": {...}}``, or None."""
        return self.read_json(self.config)

    def read_status(self) -> dict | None:
        return self.read_json(self.status)

    def finished(self) -> bool:
        """Whether the run trained to the end of its schedule."""
        return (self.read_status() or {}).get("state") == "finished"

    def training_seconds(self) -> float:
        """Seconds spent in the units of the schedule, over every attempt that trained them (from the events)."""
        return sum(event.get("seconds", 0.0) for event in self.events())

    def create(self) -> "RunDir":
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.samples.mkdir(parents=True, exist_ok=True)
        return self

    def claim(self) -> "RunDir":
        """Make this process the run's only writer until it exits, or raise ``RunInUse``.

        Two processes training one run directory would interleave their events and overwrite each other's
        checkpoints (a ``seqgan oracle run`` started twice, or ``seqgan train --resume`` beside the app's job).
        The lock is an flock on ``.lock``, so the system releases it when the process ends however it ends; the
        same process may claim a run again (a test that resumes in-process). Where the directory does not exist
        yet, or the file system has no flock, nothing is locked.
        """
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return self
        key = self.path.resolve()
        held = _claimed.get(key)
        if held is not None:
            if _same_file(os.fstat(held), os.fstat(fd)):
                os.close(fd)
                return self
            os.close(_claimed.pop(key))  # the folder was deleted and made again: another run, to claim afresh
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.lock_holder()
            raise RunInUse(f"{self.path}: another process{f' (pid {holder})' if holder else ''} is "
                           f"training this run; wait for it to end or stop it first") from None
        except OSError:
            os.close(fd)
            return self
        try:  # the pid only names the holder in another process's message
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass
        _claimed[key] = fd
        return self

    def lock_holder(self) -> int | None:
        """The pid ``claim`` wrote into .lock (read, never locked: a probe could make a claim fail at that
        instant); None when there is none. It may be stale: whether that process still runs is the caller's
        question."""
        try:
            text = self.lock.read_text()[:32].strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def check_trainable(self) -> None:
        """Refuse, before anything changes, a run that cannot continue training: an exported one has no
        train.txt (the data it trains on)."""
        if not self.train_data.is_file():
            raise InputError(self.path, "has no train.txt, the data it trains on: an exported run samples but "
                                        "cannot continue training")

    def checkpoint(self, role: str) -> Path:
        return self.checkpoints / f"{role}.pt"

    def write_json(self, path: Path, data: dict) -> None:
        atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def update_status(self, **fields) -> dict:
        status = self.read_json(self.status) or {"started": time.time()}
        status.update(fields, updated=time.time(), pid=os.getpid())
        self.write_json(self.status, status)
        return status

    def append_event(self, event: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(event) + "\n")

    def events(self) -> list[dict]:
        """All complete events; a line still being written is skipped."""
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def truncate_events(self, unit: int) -> None:
        """On resume, drop events of units after the checkpoint so the stream has no duplicates (-1: all)."""
        kept = [e for e in self.events() if e.get("unit", -1) < unit]
        atomic_write_bytes(self.metrics, "".join(json.dumps(e) + "\n" for e in kept).encode())

    def tail(self, path: Path, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of a text file of the run (log.txt, output.txt); [] when there is none."""
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def log_line(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
