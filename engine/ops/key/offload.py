"""Crypto off the main interpreter: one forked worker process, batches pipelined.

Why a process and not a thread: measured here, ``cryptography``'s AESGCM
releases the GIL inside the cipher, but on values of a few dozen bytes the
cost is Python's (base64, slicing, the loop, building SQL), so a worker
thread only takes turns with PyMySQL's parsing on one core. A forked process
runs the crypto on the other core while the main process talks to MySQL.

The worker is forked, so the codecs (and their keys) reach it by inheritance,
never through a pipe, argv or the environment. It ignores SIGINT (the engine
decides how to stop), lets go of the files it inherited (the journal's lock
above all) and exits by itself when the engine process is gone (a SIGKILLed
engine must not leave it behind). A single batch is done
in-process: forking costs more than it saves.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from engine.cipher import Codec
from engine.errors import EngineError

R = TypeVar("R")
Job = Callable[..., R]
#: Batches handed to the worker ahead of the one being written back.
DEPTH = 2
_CODECS: tuple[Codec, ...] = ()


def _let_go_of_inherited_files() -> None:
    """Drop what the fork inherited and the worker must not hold: the journal's
    flock (shared with a forked child), the database socket, the engine's files
    and its stdio (an SSH session's channel)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
            os.close(fd)


def _init_worker(codecs: tuple[Codec, ...], parent: int) -> None:
    global _CODECS
    _CODECS = codecs
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.path.isdir("/proc/self/fd"):
        _let_go_of_inherited_files()

    def orphan_watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(0.2)
        os._exit(0)

    threading.Thread(target=orphan_watch, daemon=True).start()


def _run(job: Job[R], args: tuple[Any, ...]) -> R:
    return job(_CODECS, *args)


class Offload:
    """``map`` runs ``job(codecs, *args)`` for each args, in order, in the worker."""

    def __init__(self, *codecs: Codec) -> None:
        self.codecs = codecs
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Offload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def start(self) -> None:
        """Fork the worker now, before this process starts a thread of its own (a fork
        copies only the calling thread, and no lock another thread holds, OpenSSL's of a
        TLS connection included, must be copied held)."""
        self._started().submit(os.getpid).result()

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(self.codecs, os.getpid()),
            )
        return self._pool

    def map(self, job: Job[R], argses: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        """Results in order. Pulling the next args (a database read) overlaps the
        worker's crunching of the previous ones."""
        items = iter(argses)
        first = next(items, None)
        if first is None:
            return
        second = next(items, None)
        if second is None:
            yield job(self.codecs, *first)
            return
        pool = self._started()
        pending: deque[Future[R]] = deque()
        try:
            for args in (first, second):
                pending.append(pool.submit(_run, job, args))
            for args in items:
                pending.append(pool.submit(_run, job, args))
                while len(pending) > DEPTH:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            self._pool = None
            raise EngineError("the engine's crypto worker process stopped unexpectedly") from exc
        finally:
            for future in pending:
                future.cancel()
