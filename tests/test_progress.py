"""Progress in a log file: plain lines where rich's bar would print nothing until it stops."""

import io

from rich.console import Console

from morphtransfer.progress import Progress


def _run(console, steps, total, **kwargs):
    with Progress(console=console, unit="galaxies", **kwargs) as bar:
        task = bar.add_task("simulate", total=total)
        for n in steps:
            bar.advance(task, n)
    return console.file.getvalue()


def test_plain_lines_in_a_file():
    out = _run(Console(file=io.StringIO(), force_terminal=False, width=200), [10, 10, 10], 30,
               every_s=0.0)
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith("simulate: 10/30 galaxies (33%), 0:00 elapsed")
    assert lines[1].startswith("simulate: 20/30 galaxies (67%)")
    assert lines[2] == "simulate: 30/30 galaxies (100%), 0:00 elapsed"  # finished: no time left
    assert "━" not in out  # the bar itself is not drawn into the file


def test_label_and_large_counts():
    out = _run(Console(file=io.StringIO(), force_terminal=False, width=200), [12_345], 30_000,
               every_s=0.0, label="ingest gz1")
    assert out.startswith("ingest gz1: 12,345/30,000 galaxies (41%), 0:00 elapsed")


def test_short_tasks_and_terminals_stay_as_they_were():
    # a task shorter than every_s writes nothing, not even when it finishes
    assert _run(Console(file=io.StringIO(), force_terminal=False), [10, 20], 30, every_s=3600) == ""
    # on a terminal it is rich's bar, with no plain lines
    out = _run(Console(file=io.StringIO(), force_terminal=True, width=100), [10, 20], 30, every_s=0.0)
    assert "elapsed" not in out and "30/30" not in out
    # disabled: nothing at all
    assert _run(Console(file=io.StringIO(), force_terminal=False), [30], 30, every_s=0.0,
                disable=True) == ""


def test_clock():
    from morphtransfer.progress import _clock

    assert [_clock(s) for s in (0, 59.6, 65, 3725)] == ["0:00", "1:00", "1:05", "1:02:05"]
