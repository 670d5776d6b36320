"""The decision-tree schema and the Task table (Q1, Q2, Q3 of the study), and robust labels.

Catalogue columns, whatever the source (simulator or any Galaxy Zoo adapter), follow one
convention so that the same robust-label code serves all of them:

    <question>_<answer>_count      votes for that answer (int)
    <question>_<answer>_fraction   count / votes cast in that question (float, NaN if none)
    <question>_total_votes         votes cast in that question (int)

Truth columns of simulated data start with ``true_`` and are never read by training code.
Adding a task (rings, mergers, spiral arms) is a row in TASKS plus, if new, a Question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from morphtransfer.errors import InputError


@dataclass(frozen=True)
class Question:
    """One question of the Galaxy Zoo decision tree."""

    name: str
    answers: tuple[str, ...]
    text: str = ""

    def count_column(self, answer: str) -> str:
        return f"{self.name}_{answer}_count"

    def fraction_column(self, answer: str) -> str:
        return f"{self.name}_{answer}_fraction"

    @property
    def total_column(self) -> str:
        return f"{self.name}_total_votes"


# The part of the Galaxy Zoo 2 / GZ DECaLS tree the study uses (Willett et al. 2013, Fig. 1;
# Walmsley et al. 2022): T01 smooth or features, T02 edge-on (asked of 'features'), T03 bar
# (asked of 'features' and 'not edge-on').
QUESTIONS: dict[str, Question] = {
    "smooth_or_featured": Question(
        "smooth_or_featured",
        ("smooth", "featured_or_disk", "artifact"),
        "Is the galaxy simply smooth and rounded, with no sign of a disk?",
    ),
    "disk_edge_on": Question(
        "disk_edge_on", ("yes", "no"), "Could this be a disk viewed edge-on?"
    ),
    "bar": Question("bar", ("yes", "no"), "Is there a sign of a bar feature through the centre?"),
}


def vote_columns(question_names: list[str] | None = None) -> list[str]:
    """All count, fraction and total columns of the schema (in a stable order)."""
    cols: list[str] = []
    for q in QUESTIONS.values():
        if question_names is not None and q.name not in question_names:
            continue
        for a in q.answers:
            cols += [q.count_column(a), q.fraction_column(a)]
        cols.append(q.total_column)
    return cols


def add_fractions(catalog: pd.DataFrame) -> pd.DataFrame:
    """Fill ``_total_votes`` and ``_fraction`` columns from the ``_count`` columns present."""
    out = catalog.copy()
    for q in QUESTIONS.values():
        present = [a for a in q.answers if q.count_column(a) in out.columns]
        if not present:
            continue
        for a in q.answers:
            if q.count_column(a) not in out.columns:
                out[q.count_column(a)] = 0
        total = sum(out[q.count_column(a)].astype("float64") for a in q.answers)
        out[q.total_column] = total.astype("int64")
        with np.errstate(invalid="ignore", divide="ignore"):
            for a in q.answers:
                out[q.fraction_column(a)] = np.where(
                    total > 0, out[q.count_column(a)] / total.where(total > 0, 1), np.nan
                )
    return out


@dataclass(frozen=True)
class Task:
    """A binary classification task of the study, as data."""

    name: str  # "Q1"
    title: str
    question: str  # key of QUESTIONS
    positive: str  # answer that makes label 1
    negative: str  # answer that makes label 0
    prerequisites: tuple[tuple[str, str], ...]  # (question, answer) steps that lead here
    truth_column: str  # boolean truth column of simulated data
    # Class weights balanced in training (the study does so for Q2 and Q3).
    balance_classes: bool = False

    @property
    def q(self) -> Question:
        return QUESTIONS[self.question]

    @property
    def positive_fraction_column(self) -> str:
        return self.q.fraction_column(self.positive)

    @property
    def negative_fraction_column(self) -> str:
        return self.q.fraction_column(self.negative)


TASKS: dict[str, Task] = {
    "Q1": Task(
        "Q1",
        "disk/features vs smooth",
        "smooth_or_featured",
        positive="featured_or_disk",
        negative="smooth",
        prerequisites=(),
        truth_column="true_disk",
    ),
    "Q2": Task(
        "Q2",
        "edge-on disk",
        "disk_edge_on",
        positive="yes",
        negative="no",
        prerequisites=(("smooth_or_featured", "featured_or_disk"),),
        truth_column="true_edge_on",
        balance_classes=True,
    ),
    "Q3": Task(
        "Q3",
        "bar",
        "bar",
        positive="yes",
        negative="no",
        prerequisites=(("smooth_or_featured", "featured_or_disk"), ("disk_edge_on", "no")),
        truth_column="true_bar",
        balance_classes=True,
    ),
}


def get_task(name: str) -> Task:
    key = name.strip().upper()
    if key not in TASKS:
        raise InputError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def agreement(fractions: np.ndarray) -> np.ndarray:
    """Galaxy Zoo agreement a(p) = 1 - H(p) / log(n) for rows of answer fractions (n answers).

    1 when every volunteer gave the same answer, 0 when votes are spread evenly.
    """
    p = np.asarray(fractions, dtype="float64")
    n = p.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    a = 1.0 - h / np.log(n)
    a[~np.isfinite(p).all(axis=1)] = np.nan
    return a


def robust_labels(
    catalog: pd.DataFrame,
    task: Task | str,
    rule: str = "fraction",
    p_threshold: float = 0.7,
    min_votes: int = 5,
    min_agreement: float = 0.5,
    prerequisite_fraction: float | None = None,
) -> pd.Series:
    """Robust binary labels of one task: 1, 0, or -1 where the votes are not robust.

    rule="fraction" (the study): label 1 if the positive answer's fraction > p_threshold, label 0 if
    the negative answer's fraction > p_threshold, with at least ``min_votes`` votes in the question.
    rule="agreement": the majority answer when a(p) >= min_agreement and votes >= min_votes, if that
    answer is the task's positive or negative one.

    prerequisite_fraction: when set (> 0), a galaxy is labelled only if the volunteers took the
    task's path through the decision tree: every prerequisite answer (Q2: featured_or_disk; Q3:
    featured_or_disk and not edge-on) has a fraction above it. Without it, the few volunteers who
    called an elliptical "featured" can make it a robust "not barred" (Q3 negatives then hold
    ellipticals and edge-on disks, and a model scores by telling those from face-on disks). Galaxy
    Zoo 2's own advice for such samples is a threshold on each step (Willett et al. 2013).
    """
    task = get_task(task) if isinstance(task, str) else task
    q = task.q
    needed = [q.fraction_column(a) for a in (task.positive, task.negative)] + [q.total_column]
    prereq = bool(prerequisite_fraction) and task.prerequisites
    if prereq:
        needed += [QUESTIONS[qn].fraction_column(a) for qn, a in task.prerequisites]
    missing = [c for c in needed if c not in catalog.columns]
    if missing:
        raise InputError(
            f"catalogue lacks the vote columns {missing} needed for {task.name} ({task.title}); "
            "ingest it with a catalogue adapter (morphtransfer ingest --format ...) so that it has "
            "<question>_<answer>_fraction and <question>_total_votes columns"
            + ("; or label without the decision-tree prerequisites ([labels] "
               "prerequisite_fraction = 0)" if prereq else "")
        )
    if prerequisite_fraction is not None and not 0.0 <= float(prerequisite_fraction) < 1.0:
        raise InputError(
            f"prerequisite_fraction must be in [0, 1) (0 turns the prerequisites off), "
            f"got {prerequisite_fraction!r}"
        )
    total = catalog[q.total_column].fillna(0).to_numpy()
    enough = total >= min_votes
    pos = catalog[q.fraction_column(task.positive)].to_numpy(dtype="float64")
    neg = catalog[q.fraction_column(task.negative)].to_numpy(dtype="float64")
    labels = np.full(len(catalog), -1, dtype="int8")
    if rule == "fraction":
        labels[enough & (pos > p_threshold)] = 1
        labels[enough & (neg > p_threshold)] = 0
    elif rule == "agreement":
        cols = [q.fraction_column(a) for a in q.answers if q.fraction_column(a) in catalog.columns]
        fr = catalog[cols].to_numpy(dtype="float64")
        a = agreement(np.nan_to_num(fr, nan=0.0))
        a[~enough] = np.nan
        top = np.argmax(np.nan_to_num(fr, nan=-1.0), axis=1)
        names = [c[len(q.name) + 1 : -len("_fraction")] for c in cols]
        keep = enough & (a >= min_agreement)
        for i, ans in enumerate(names):
            if ans == task.positive:
                labels[keep & (top == i)] = 1
            elif ans == task.negative:
                labels[keep & (top == i)] = 0
    else:
        raise InputError(f"unknown robust-label rule {rule!r}; use 'fraction' or 'agreement'")
    if prereq:
        on_path = np.ones(len(catalog), dtype=bool)
        for qn, a in task.prerequisites:
            f = catalog[QUESTIONS[qn].fraction_column(a)].to_numpy(dtype="float64")
            on_path &= np.nan_to_num(f, nan=0.0) > float(prerequisite_fraction)
        labels[~on_path] = -1
    return pd.Series(labels, index=catalog.index, name=f"label_{task.name}")


def robust_summary(
    catalog: pd.DataFrame, tasks: list[str] | None = None, **rule_kwargs
) -> pd.DataFrame:
    """How many galaxies each task's robust rule keeps, per class, and as a fraction of all."""
    rows = []
    for name in tasks or list(TASKS):
        t = get_task(name)
        try:
            lab = robust_labels(catalog, t, **rule_kwargs)
        except InputError:
            continue
        n_pos, n_neg = int((lab == 1).sum()), int((lab == 0).sum())
        rows.append(
            {
                "task": t.name,
                "title": t.title,
                "n_total": len(catalog),
                "n_robust": n_pos + n_neg,
                "n_pos": n_pos,
                "n_neg": n_neg,
                "frac_pos_of_robust": n_pos / max(n_pos + n_neg, 1),
                "frac_pos_of_all": n_pos / max(len(catalog), 1),
            }
        )
    return pd.DataFrame(rows)
