"""Progress bars that also show in a log file.

rich's live displays redraw only on a terminal. Written to a file (``nohup``, a batch job's log,
``make run > log``) a bar prints nothing until it stops, so a long simulation, ingest, download or
prediction is silent for its whole length. ``Progress`` is rich's ``Progress``, drawn as usual on a
terminal; on anything else it writes, instead of the bar, one plain line per task at most every
``every_s`` seconds and one when the task finishes (tasks shorter than ``every_s`` stay silent),
e.g.::

    simulate: 9,600/30,000 galaxies (32%), 2:41 elapsed, ~5:42 left

Training needs none of this: Lightning's bar (``train._progress_bar``) leaves one line per epoch.
"""

from __future__ import annotations

import time

from rich import progress as _rich

LOG_EVERY_S = 30.0


def _clock(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress(_rich.Progress):
    """rich.progress.Progress; plain lines instead of the bar when the console is not a terminal.

    ``label``: the first word of the plain line (default: the task's description); ``unit``: what
    is counted ("galaxies"); ``every_s``: the least time between two lines of one task.
    """

    def __init__(self, *columns, label: str | None = None, unit: str = "",
                 every_s: float = LOG_EVERY_S, **kwargs):
        super().__init__(*columns, **kwargs)
        self.label = label
        self.unit = unit
        self.every_s = float(every_s)
        self._plain = not self.disable and not (self.console.is_terminal or self.console.is_jupyter)
        self._logged: dict = {}  # task id -> (time of its last line, completed then)

    def start(self) -> None:
        if not self._plain:  # plain: no live display at all (its one final drawing included)
            super().start()

    def stop(self) -> None:
        if not self._plain:
            super().stop()

    def add_task(self, description: str, *args, **kwargs):
        task_id = super().add_task(description, *args, **kwargs)
        self._logged[task_id] = (time.monotonic(), self._task(task_id).completed)
        return task_id

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _task(self, task_id):
        return next(t for t in self.tasks if t.id == task_id)

    def _log(self, task_id) -> None:
        if not self._plain:
            return
        task = self._task(task_id)
        last_t, last_done = self._logged.get(task_id, (0.0, None))
        now = time.monotonic()
        if task.completed == last_done or now - last_t < self.every_s and not (
                task.finished and (task.elapsed or 0.0) >= self.every_s):
            return  # nothing new, too soon, or a task too short to need a line at all
        self._logged[task_id] = (now, task.completed)
        self.console.print(self.line(task), highlight=False, markup=False)

    def line(self, task) -> str:
        """The plain line of one task: counts, percentage, time elapsed and left."""
        name = self.label or task.description
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{name}: {int(task.completed):,}"]
        if task.total:
            parts[0] += f"/{int(task.total):,}{unit} ({100.0 * task.completed / task.total:.0f}%)"
        else:
            parts[0] += unit
        parts.append(f"{_clock(task.elapsed or 0.0)} elapsed")
        if task.total and not task.finished and task.time_remaining is not None:
            parts.append(f"~{_clock(task.time_remaining)} left")
        return ", ".join(parts)
