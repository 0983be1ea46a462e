"""Where Ray's messages go on a quiet console: the command's log file, or the current stage's while it runs.

Why a stream that can change its target: Ray's driver loggers, Ray Data's logging config and the worker-output
dispatcher are each set up once per Ray session (``distributed/runtime.py``), but a pipeline runs a dozen stages
in that session, and a user who wants to know why Bucket-SFT was slow should open ``logs/sft_bucket.log``, not
search one file of every stage. So all three write to one :class:`SwitchableLogStream`, and the pipeline points it
at a stage's file for the stage's duration (:func:`stage_log_file`); between stages (Ray's start and shutdown) the
lines go to the command's ``ray.log``.

Pure: no Ray here; the runtime registers the stream, the stages layer switches it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class SwitchableLogStream:
    """A text stream writing to ``default_path``, or to the file a :meth:`redirect` block names."""

    def __init__(self, default_path: Path) -> None:
        default_path.parent.mkdir(parents=True, exist_ok=True)
        self._default = default_path.open("a", encoding="utf-8")
        self._current: TextIO = self._default
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return self._current.write(text)

    def flush(self) -> None:
        with self._lock:
            self._current.flush()

    @contextlib.contextmanager
    def redirect(self, path: Path) -> Iterator[Path]:
        """Lines written inside the block go to ``path`` (appended), then to the previous target again."""
        path.parent.mkdir(parents=True, exist_ok=True)
        target = path.open("a", encoding="utf-8")
        with self._lock:
            previous, self._current = self._current, target
        try:
            yield path
        finally:
            with self._lock:
                self._current = previous
            target.close()

    def close(self) -> None:
        with self._lock:
            self._default.close()


_active: SwitchableLogStream | None = None


def activate(stream: SwitchableLogStream | None) -> None:
    """Make ``stream`` the one Ray's messages go to in this process (None: no log file, e.g. ``-v``)."""
    global _active
    _active = stream


@contextlib.contextmanager
def stage_log_file(path: Path) -> Iterator[Path | None]:
    """Ray's messages of the block go to ``path``; yields it, or None when this process writes no log file (a
    verbose console, or a Tune trial process whose output the driver files)."""
    stream = _active
    if stream is None:
        yield None
        return
    with stream.redirect(path):
        yield path


@contextlib.contextmanager
def prints_to_log_file() -> Iterator[None]:
    """What libraries ``print`` inside the block goes to the active log file, when there is one. Ray Tune's driver
    prints its experiment table ("Configuration for experiment", "View detailed results here") whatever the
    run's verbosity; inside a block whose Ray messages are filed, that table is one of them."""
    stream = _active
    if stream is None:
        yield
        return
    with contextlib.redirect_stdout(stream):  # type: ignore[type-var]  # a text stream: write and flush
        yield


class ActiveStreamHandler(logging.Handler):
    """A logging handler writing to the active stream (Ray Data's logging config names this class, since that
    config is applied by Ray Data itself and can only name a handler, not hand over an object)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = _active
        if stream is None:
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a log line must never break a run
            self.handleError(record)
