"""report.html: one self-contained page (images embedded as base64) with the whole study."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.report.tables import claims_lines, labels_phrase, to_markdown

CAPTIONS = {
    "roc": "Figure 2. ROC curves per question: the SDSS model on SDSS (0) and on DES (a), "
    "fine-tuned on DES in all layers (b) or the dense part only (c), and trained from scratch on "
    "the same DES galaxies (d); where the run has it, (0t): the SDSS model on the SDSS images of "
    "the DES test galaxies, the same galaxies and labels as a-d. Data: figures/roc.csv.",
    "label_budget": "Label budget: AUC and accuracy of b, c, d against the number of labelled DES "
    "galaxies (mean ± spread over seeds), with the SDSS level (0) (and (0t), on the DES test galaxies' SDSS images) and the direct "
    "transfer (a) as lines; a ring marks a point where some seeds' models stayed flat (P barely varies: classifications at P_th all one side; n_flat). "
    "Data: figures/label_budget.csv.",
    "examples": "Figure 1. The same galaxies seen by SDSS (top) and DES (bottom): smooth, disk, "
    "edge-on and barred, as robust volunteer labels call them. Data: figures/examples.csv.",
    "false_positives_q3": "Figure 3. DES galaxies the fine-tuned model (b) calls barred but the "
    "volunteers do not; the simulator's truth says which bars the volunteers missed. "
    "Data: figures/false_positives_q3.csv.",
}


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table_to_html(md: str) -> str:
    """The markdown of table2.md rendered as HTML tables and paragraphs (no markdown library)."""
    out, rows = [], []

    def flush():
        if rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[2:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _models(run_dir: Path, cards: list[tuple[Path, dict]]) -> pd.DataFrame:
    rows = []
    for folder, c in cards:
        rows.append(
            {
                "model": str(folder.relative_to(run_dir)),
                "survey": c.get("survey"),
                "mode": c.get("mode"),
                "n_train": c.get("n_train"),
                "n_pos": c.get("n_pos"),
                "precision": c.get("recipe", {}).get("precision"),
                "epochs_run": c.get("epochs_run"),
                "best_epoch": c.get("best_epoch"),
                "val_auc": c.get("val_auc"),
                "active_feature_channels": c.get("active_feature_channels"),
                "training_set_hash": str(c.get("training_set_hash", ""))[:12],
                "model_id": c.get("model_id"),
            }
        )
    return pd.DataFrame(rows)


def write_html(run_dir: Path, cfg: dict | None, t2: pd.DataFrame, budget: pd.DataFrame, reach: dict,
               notes: list[str], figs: dict, p_threshold: float,
               found: pd.DataFrame | None = None, reach_0t: dict | None = None,
               *, claims: dict | None = None, trained_in: str = "",
               cards: list[tuple[Path, dict]]) -> Path:
    """report.html; ``cards``: the run's tables.model_cards (read once by write_report)."""
    from morphtransfer import __version__
    from morphtransfer.study import _to_toml

    name = (cfg or {}).get("name", run_dir.name)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>morphtransfer study: {html.escape(str(name))}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 7px;text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;"
        "overflow:auto;font-size:12px}figure{margin:1.5em 0}figcaption{font-size:13px;color:#444}"
        "</style></head><body>",
        f"<h1>Transfer study: {html.escape(str(name))}</h1>",
        "<p>After Dominguez S&aacute;nchez et al. 2019 (MNRAS 484, 93): a morphology classifier trained "
        "on SDSS, applied to DES as it is (a), fine-tuned on a few DES labels (b, c) and trained from "
        f"scratch on them (d). morphtransfer {__version__}; run folder <code>{html.escape(str(run_dir))}</code>.</p>",
        "<h2>Table 2</h2>",
        _md_table_to_html(to_markdown(t2, p_threshold, labels_phrase(cfg), trained_in)),
    ]
    if reach:
        def cell(v):
            return v if v is not None else "not reached"

        rows = []
        for t, d in reach.items():
            r = {"question": t, **{f"({e}) to (0)": cell(v) for e, v in d.items()}}
            if reach_0t and t in reach_0t:
                r.update({f"({e}) to (0t)": cell(v) for e, v in reach_0t[t].items()})
            rows.append(r)
        parts += [
            "<h2>Labels needed to reach the SDSS level</h2>",
            "<p>Smallest DES N_train at which the mean AUC over seeds comes within 0.02 of the (0) "
            "AUC, and, where the run has it, of the (0t) AUC: the SDSS model on the SDSS images of "
            "the very DES test galaxies b, c, d are scored on, free of the two test samples' "
            "difference (data: metrics.json, label_budget.csv).</p>",
            _table(pd.DataFrame(rows)),
        ]
    if found is not None and len(found) and found["auc_b_minus_d"].notna().any():
        parts += [
            "<h2>The study's findings, measured</h2>",
            f"<p>Per question: (a) - (0) in TPR and precision at P_th = {p_threshold} (what the "
            "SDSS model loses on DES as it is); (b) - (0) in AUC (how near fine-tuning gets to the "
            "SDSS level); the same against (0t), the SDSS model on the SDSS images of the DES "
            "test galaxies, where the run has it; (b) - (d) in AUC at the main and the smallest DES N_train (what the SDSS "
            "start is worth; &plusmn; the seeds' spreads in quadrature); the part of (b)'s AUC above "
            "chance that (d) reaches, (AUC_d - 0.5) / (AUC_b - 0.5).</p>",
            _table(found),
        ]
        said = claims_lines(claims or {}, sorted(found["question"].tolist()))
        if said:
            parts += ["<p>In short:</p><ul>"] + [f"<li>{html.escape(s)}</li>" for s in said] + ["</ul>"]
    for key in ("roc", "label_budget", "examples", "false_positives_q3"):
        path = figs.get(key)
        if path is not None:
            parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(CAPTIONS[key])}</figcaption></figure>")
    if len(budget):
        cols = ["task", "experiment", "n_train_target", "n_seeds", "n_flat", "n_dead", "auc", "auc_std", "accuracy",
                "accuracy_std", "tpr", "precision", "auc_level_0", "auc_level_0t", "auc_level_a"]
        parts += ["<h2>Label-budget table</h2>", _table(budget[[c for c in cols if c in budget]])]
    models = _models(run_dir, cards)
    if len(models):
        parts += ["<h2>Models</h2><p>Each folder holds weights.safetensors and card.json.</p>", _table(models)]
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]
    if cfg:
        parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(_to_toml(cfg))}</pre>"]
    parts.append("</body></html>")
    out = run_dir / "report.html"
    out.write_text("\n".join(parts))
    return out
