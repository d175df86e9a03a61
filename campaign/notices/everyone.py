"""Every wave for every recipient, rendered and built on every core (`campaign schedule`, G5): the audience split
into ranges of account id, each read and rendered by a worker process with its own connection, the first
problems gathered in wave and account order — the same answer one process gives, in a fraction of the time.

The processes are started (forked, when that is safe) before the caller opens its transaction, while this process
holds no database connection: a forked child must never share an open SQLite or PostgreSQL connection with its
parent. They then wait for the campaign's words and their shares. A child that dies, or a Ctrl-C, stops them all
and raises a CampaignError: nothing is scheduled, and no process is left behind (each also stops by itself when
its parent is gone)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import db
from campaign.definition import Definition
from campaign.errors import MAX_SHOWN, CampaignError, TemplateProblem
from campaign.notices import proofs
from campaign.notices.kept import TemplateSet
from campaign.notices.rendering import Renderer
from campaign.redaction import redact
from campaign.store import audience

SHARES_PER_JOB = 4  # more shares than processes: one that finishes early takes the next
PARALLEL_FROM = 2000  # recipients: below this, the default renders in this process (starting processes costs more)
STALL_SECONDS = 300.0  # no message rendered by any process for this long: something is stuck, stop
STOP_SECONDS = 5.0  # a process asked to stop is killed after this


class Interrupted(CampaignError):
    """Ctrl-C (or SIGTERM) while rendering: the render processes were stopped."""

    exit_code = 130
    code = "interrupted"


@dataclass(frozen=True)
class Words:
    """What a render process renders from (picklable): the campaign's definition and its kept template set (and
    the folder its errors name)."""

    definition: Definition
    templates: TemplateSet
    folder: Path

    def renderer(self) -> Renderer:
        return self.templates.renderer(self.definition, self.folder)


@dataclass(frozen=True)
class Outcome:
    rendered: int  # messages rendered and built
    failed: int  # messages that did not render or build
    problems: list[str]  # the first MAX_SHOWN, `wave W, account A: problem`, in wave then account order
    jobs: int  # processes that rendered (1: this one)

    def refuse(self) -> None:
        """Raise TemplateProblem naming the first problems when any message failed."""
        if self.failed:
            shown = "\n".join(f"  {p}" for p in self.problems)
            first = f" (the first {len(self.problems)})" if self.failed > len(self.problems) else ""
            raise TemplateProblem(f"{self.failed} message(s) do not render; nothing was scheduled{first}:\n{shown}")


def _context() -> Any:
    """Fork when it is safe (Linux, no other thread that could hold a lock at the fork): the children need not
    import everything again (a second of CPU each). Otherwise spawn."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class Pool:
    """`jobs` render processes (None: one per CPU; 1: none, this process renders). Start it with `with` before
    opening a transaction; `render` hands them the work. Under `spawn` they start when first needed instead."""

    def __init__(self, engine: Engine, database_url: str, jobs: int | None) -> None:
        self.engine, self.database_url = engine, database_url
        self.explicit = jobs is not None
        self.jobs = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
        self._ctx: Any = None
        self._procs: list[Any] = []
        self._pipes: list[Pipe] = []
        self._counter: Any = None  # messages rendered, over every process
        self._next: Any = None  # the next share to take

    def __enter__(self) -> Pool:
        if self.jobs > 1:
            self._ctx = _context()
            if self._ctx.get_start_method() == "fork":
                self._start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()

    def _start(self) -> None:
        ctx = self._ctx
        if ctx.get_start_method() == "fork":
            self.engine.dispose()  # no connection of this process is carried into a forked child
        self._counter, self._next = ctx.Value("q", 0), ctx.Value("i", 0)
        for i in range(self.jobs):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, name=f"campaign-render-{i + 1}", daemon=True,
                               args=(self.database_url, theirs, self._counter, self._next, os.getpid()))
            proc.start()
            theirs.close()  # the child holds the only other end: its death is an end of file here
            self._procs.append(proc)
            self._pipes.append(ours)

    def render(self, conn: Connection, words: Words, recipients: int,
               progress: Callable[[int, int], None] | None = None, every: float = 0.5) -> Outcome:
        """Render every wave for each of the `recipients` affected now; `progress(done, total)` is called with
        the messages rendered so far, about every `every` seconds. `conn`: the caller's, for this process's own
        reads (the shares; everything, with one job)."""
        total = recipients * len(words.definition.waves)
        parallel = self.jobs > 1 and recipients > 0 and (self.explicit or recipients >= PARALLEL_FROM)
        try:
            if not parallel:
                self._stop()  # the children wait for nothing
                return self._here(conn, words, total, progress)
            if not self._procs:
                self._start()
            bounds = audience.account_bounds(conn, self.jobs * SHARES_PER_JOB)
            with _term_interrupts():
                return self._there(words, bounds, total, progress, every)
        except KeyboardInterrupt:
            self._stop()
            raise Interrupted("interrupted: the render processes were stopped; nothing was scheduled") from None

    def _here(self, conn: Connection, words: Words, total: int,
              progress: Callable[[int, int], None] | None) -> Outcome:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        tallies = proofs.render_waves(conn, words.definition, words.renderer(), tick=tick)
        return _outcome([tallies], 1)

    def _there(self, words: Words, bounds: list[tuple[str | None, str | None]], total: int,
               progress: Callable[[int, int], None] | None, every: float) -> Outcome:
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            try:
                pipe.send((words, bounds))  # each child then takes the next share not taken, until none is left
            except OSError:
                raise _crashed(proc) from None
        shares: dict[int, list[proofs.Tally]] = {}
        live = dict(zip(self._pipes, self._procs, strict=True))
        seen, moved = -1, time.monotonic()
        while live:
            for ready in wait(list(live), timeout=every):
                assert isinstance(ready, Pipe)
                proc = live[ready]
                try:
                    message = ready.recv()
                except EOFError:
                    raise _crashed(proc) from None
                if message[0] == "share":
                    shares[message[1]] = message[2]
                elif message[0] == "done":
                    del live[ready]
                elif message[0] == "error":
                    raise message[1]
                else:
                    raise CampaignError(f"a render process failed: {message[1]}; nothing was scheduled")
            done = int(self._counter.value)
            if progress is not None:
                progress(done, total)
            if done != seen:
                seen, moved = done, time.monotonic()
            elif time.monotonic() - moved > STALL_SECONDS:
                raise CampaignError(f"no message was rendered for {STALL_SECONDS:.0f} s: the render processes were "
                                    "stopped; nothing was scheduled")
        missing = sorted(set(range(len(bounds))) - set(shares))
        if missing:
            raise CampaignError(f"render processes ended with {len(missing)} share(s) of the audience not rendered; "
                                "nothing was scheduled")
        return _outcome([shares[i] for i in range(len(bounds))], len(self._procs))

    def _stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after STOP_SECONDS) and wait for each: none is left behind."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(STOP_SECONDS)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in self._pipes:
            pipe.close()
        self._procs, self._pipes = [], []


@contextlib.contextmanager
def _term_interrupts() -> Iterator[None]:
    """SIGTERM stops the render as Ctrl-C does (the children stopped, the error said) rather than end this process
    at once; only where a handler can be set (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _crashed(proc: Any) -> CampaignError:
    proc.join(STOP_SECONDS)
    return CampaignError(f"a render process (pid {proc.pid}) {_died(proc.exitcode)}; nothing was scheduled. Run "
                         "`campaign schedule` again (--jobs 1 renders in this process)")


def _died(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _outcome(shares: list[list[proofs.Tally]], jobs: int) -> Outcome:
    """The shares' tallies as one process would have found them: counts summed, problems in wave order, then
    account order (the shares are in account order)."""
    rendered = sum(t.rendered for tallies in shares for t in tallies)
    failed = sum(t.failed for tallies in shares for t in tallies)
    problems: list[str] = []
    for w in range(len(shares[0]) if shares else 0):
        for tallies in shares:
            problems += [f"wave {tallies[w].wave}, {p}" for p in tallies[w].problems]
    return Outcome(rendered, failed, problems[:MAX_SHOWN], jobs)


def _serve(database_url: str, pipe: Pipe, counter: Any, taken: Any, parent: int) -> None:
    """A render process: wait for the words and the shares, then take the next share not taken until none is
    left, sending each share's tallies back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    engine: Engine | None = None

    def orphaned() -> bool:
        return os.getppid() != parent  # the parent is gone (killed): stop, not render on for nobody

    try:
        while not pipe.poll(1.0):
            if orphaned():
                return
        words, bounds = pipe.recv()
        d, renderer = words.definition, words.renderer()
        engine = db.make_engine(database_url)

        def tick(n: int) -> None:
            if orphaned():
                raise SystemExit(1)
            with counter.get_lock():
                counter.value += n

        while True:
            with taken.get_lock():
                index = taken.value
                taken.value += 1
            if index >= len(bounds):
                break
            after, upto = bounds[index]
            with db.read(engine) as conn:
                pipe.send(("share", index, proofs.render_waves(conn, d, renderer, after, upto, MAX_SHOWN, tick)))
        pipe.send(("done",))
    except (EOFError, BrokenPipeError):
        return  # the parent closed its end: it stopped us
    except CampaignError as exc:
        pipe.send(("error", exc))
    except Exception as exc:  # a fault of the run (the database went away): said in words, redacted
        pipe.send(("failed", redact(f"{type(exc).__name__}: {exc}")))
    finally:
        if engine is not None:
            engine.dispose()
        pipe.close()
