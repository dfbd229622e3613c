"""Progress of long work: a tqdm bar in a terminal, and reports to whoever listens (the Prefect UI).

`progress()` is the one progress helper. A caller higher up (a Prefect task) listens with
`listen_to_progress(listener)`: each bar opened directly inside that block reports to it as it
goes, throttled (every `REPORT_EVERY_S` seconds or `REPORT_EVERY_FRACTION` of the total, whichever
comes first, and always when it opens and closes). The fraction rule counts updates, not time, so
a short bar on a fast machine still reports more than its start and end. Bars nested inside a
reporting bar (an evaluation probe inside pretraining) stay in the terminal. No Prefect here: a
listener is any callable that takes a `ProgressReport`.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

REPORT_EVERY_S = 2.0
REPORT_EVERY_FRACTION = 0.05


@dataclass(frozen=True)
class ProgressReport:
    """Where one bar stands. `bar` numbers the bars of one listening block (0, 1, ...)."""

    bar: int
    desc: str
    done: int
    total: int | None  # None: not known while the work goes on (a listing); no percent or ETA then
    unit: str
    seconds: float  # since the bar opened
    initial: int = 0  # done before it opened (a resumed run): not part of the rate
    images_per_unit: int = 1  # a pretraining step is a batch of images
    note: str = ""  # the bar's postfix, e.g. "loss=0.4123"
    finished: bool = False

    @property
    def percent(self) -> float:
        if self.total is None:
            return 100.0 if self.finished else 0.0
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.done / self.total)

    @property
    def images_per_second(self) -> float | None:
        counted = self.done - self.initial
        return counted * self.images_per_unit / self.seconds if counted > 0 and self.seconds > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        counted = self.done - self.initial
        if self.finished or counted <= 0 or self.seconds <= 0 or self.total is None:
            return None
        return max(0, self.total - self.done) * self.seconds / counted

    def describe(self) -> str:
        """One line, e.g. `encoder: pass 2/3 · 40/100 steps · 512 img/s · ETA 00:12 · loss=0.4123`."""
        of = "" if self.total is None else f"/{self.total:,}"
        parts = [self.desc, f"{self.done:,}{of} {_PLURALS.get(self.unit, self.unit + 's')}"]
        if (rate := self.images_per_second) is not None:
            parts.append(f"{tqdm.format_sizeof(rate)} img/s")
        if self.finished:
            parts.append(f"took {tqdm.format_interval(self.seconds)}")
        elif (eta := self.eta_seconds) is not None:
            parts.append(f"ETA {tqdm.format_interval(eta)}")
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)


_PLURALS = {"img": "images"}

Listener = Callable[[ProgressReport], None]


@dataclass
class _Listening:
    listener: Listener
    bars: Iterator[int] = field(default_factory=itertools.count)


_LISTENING: ContextVar[_Listening | None] = ContextVar("lookalike_progress_listening", default=None)


@contextmanager
def listen_to_progress(listener: Listener) -> Iterator[None]:
    """Within this block (this thread or task), every bar `progress()` opens at the top level
    reports to `listener`."""
    token = _LISTENING.set(_Listening(listener))
    try:
        yield
    finally:
        _LISTENING.reset(token)


class ProgressBar:
    """What `progress()` yields: tqdm's `update`, `set_description` and `set_postfix`, also reported."""

    def __init__(self, bar: tqdm, report: ProgressReport, listener: Listener | None) -> None:
        self._tqdm, self._report, self._listener = bar, report, listener
        self._started = self._reported_at = time.monotonic()
        self._reported_done = report.done
        self._send(report)

    def update(self, n: int = 1) -> None:
        self._tqdm.update(n)
        self._report = replace(self._report, done=self._report.done + n)
        if self._listener is None:
            return
        now, total = time.monotonic(), self._report.total
        due = total is not None and self._report.done - self._reported_done >= REPORT_EVERY_FRACTION * total
        if due or now - self._reported_at >= REPORT_EVERY_S:
            self._send(replace(self._report, seconds=now - self._started))

    def set_description(self, desc: str) -> None:
        self._tqdm.set_description(desc)
        self._report = replace(self._report, desc=desc)

    def set_postfix(self, **values: object) -> None:
        self._tqdm.set_postfix(**values)
        self._report = replace(self._report, note=", ".join(f"{k}={v}" for k, v in values.items()))

    def close(self) -> None:
        self._tqdm.close()
        self._send(replace(self._report, seconds=time.monotonic() - self._started, finished=True))

    def _send(self, report: ProgressReport) -> None:
        if self._listener is not None:
            self._reported_at, self._reported_done = time.monotonic(), report.done
            self._listener(report)


@contextmanager
def progress(
    total: int | None, desc: str, unit: str = "it", *, initial: int = 0, images_per_unit: int = 1
) -> Iterator[ProgressBar]:
    """A bar over `total` units (hidden when stderr is not a terminal), `initial` of them already
    done; reported to the listener of `listen_to_progress`, if any, when opened at the top level.
    `total` None: a count and a rate without an end (a listing), reported every REPORT_EVERY_S."""
    listening = _LISTENING.get()
    token = _LISTENING.set(None)  # bars opened inside this one stay in the terminal
    try:
        bar = ProgressBar(
            tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                leave=False,
                disable=not sys.stderr.isatty(),
                dynamic_ncols=True,
                mininterval=0.5,
            ),
            ProgressReport(
                bar=next(listening.bars) if listening else 0,
                desc=desc,
                done=initial,
                total=total,
                unit=unit,
                seconds=0.0,
                initial=initial,
                images_per_unit=images_per_unit,
            ),
            listening.listener if listening else None,
        )
        try:
            yield bar
        finally:
            bar.close()
    finally:
        _LISTENING.reset(token)
