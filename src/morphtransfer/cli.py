"""The `morphtransfer` command. Thin: parses options, calls the library, prints.

Every command is a library function with the same name and arguments, so a notebook can do what
the command does with one import. Bad input raises morphtransfer.errors.InputError, caught once in
``main`` and printed without a traceback. Heavy imports happen inside the commands so that
``morphtransfer --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from morphtransfer.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Carry a galaxy-morphology classifier from one survey to another "
    "(Dominguez Sanchez et al. 2019).",
)
console = Console()


@app.callback()
def _root() -> None:
    """Carry a galaxy-morphology classifier from one survey to another (Dominguez Sanchez et al. 2019)."""


@app.command()
def version() -> None:
    """Print the package version."""
    from morphtransfer import __version__

    console.print(__version__)


# ---- simulate (issue 2) -------------------------------------------------------------------
@app.command()
def simulate(
    n: int = typer.Option(10000, "--n", help="Number of galaxies."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same data."),
    out: Path = typer.Option(Path("data/mock"), "--out", help="Folder; one Store per survey."),
    workers: int = typer.Option(2, "--workers", help="Rendering processes (0/1: in-process)."),
    surveys: str = typer.Option("sdss,des", "--surveys", help="Comma-separated survey names."),
    report: bool = typer.Option(True, "--report/--no-report",
                                help="Write gallery.png, summary and the GZ2 comparison."),
    gz2_table: Optional[Path] = typer.Option(None, "--gz2-table",
                                             help="Real GZ2 vote table to compare with."),
) -> None:
    """Simulate the same galaxies seen by SDSS and DES, with Galaxy Zoo-like votes (resumable)."""
    from rich.table import Table

    from morphtransfer.simulate import simulate as _simulate

    names = tuple(s.strip() for s in surveys.split(",") if s.strip())
    res = _simulate(n, seed=seed, out=out, workers=workers, surveys=names, report=report,
                    gz2_table=gz2_table)
    done = ", ".join(f"{s}: {k}" for s, k in res.n_rendered.items())
    console.print(f"rendered {done} galaxies in {res.seconds:.1f} s -> "
                  + ", ".join(str(p) for p in res.stores.values()))
    if res.summary is not None:
        table = Table(title="Robust label rates (fraction > 0.7, >= 5 votes)")
        for c in res.summary.columns:
            table.add_column(str(c))
        for _, row in res.summary.iterrows():
            table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
        console.print(table)
    for key, path in res.files.items():
        console.print(f"{key}: {path}")
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")


# ---- end simulate -------------------------------------------------------------------------

# ---- ingest, download (issue 3) -----------------------------------------------------------
@app.command("ingest")
def ingest_command(
    images: Path = typer.Option(..., "--images", help="Folder of cutouts (FITS, JPEG or PNG)."),
    catalog: Path = typer.Option(..., "--catalog", help="Galaxy Zoo catalogue (CSV/Parquet)."),
    format: str = typer.Option(..., "--format", help="gz1 | gz2 | gzdecals | kaggle | tidy"),
    out: Path = typer.Option(..., "--out", help="Store folder (created, or resumed)."),
    survey: str = typer.Option("sdss", help="Survey of the cutouts: sdss | des | decals."),
    bands: Optional[str] = typer.Option(None, help="Output band order, e.g. g,r,i (default: survey's)."),
    channels: Optional[str] = typer.Option(
        None, help="JPEG/PNG: band in R,G,B, e.g. i,r,g (default: the survey's cutout service)."
    ),
    file_bands: Optional[str] = typer.Option(
        None, help="FITS cubes without BAND0.. headers: their bands in file order, e.g. g,r,z."
    ),
    pixel_scale: Optional[float] = typer.Option(
        None, help="arcsec/pixel of JPEG/PNG cutouts (enables the 10 x R90 crop)."
    ),
    workers: int = typer.Option(2, help="Reader processes."),
    limit: Optional[int] = typer.Option(None, help="Ingest at most this many catalogue rows."),
) -> None:
    """Ingest cutouts + a Galaxy Zoo catalogue into a Store (resumable; bad galaxies -> rejects)."""
    from morphtransfer.data.ingest import ingest, parse_bands
    from morphtransfer.tasks import robust_summary

    store = ingest(
        images,
        catalog,
        format,
        out,
        survey=survey,
        bands=parse_bands(bands),
        workers=workers,
        channel_bands=parse_bands(channels),
        file_bands=parse_bands(file_bands),
        pixel_scale_arcsec=pixel_scale,
        limit=limit,
    )
    res = store.ingest_report
    console.print(
        f"{res.n_ingested} galaxies ingested in {res.seconds:.1f} s ({res.rate_per_s:.0f}/s); "
        f"{res.n_skipped} already there; {res.n_rejected} rejected "
        f"{res.reject_reasons or ''}; {res.n_dropped_by_catalog} dropped by the catalogue adapter"
    )
    console.print(f"Store {out}: {len(store)} galaxies, bands {store.bands}")
    if res.n_rejected:
        console.print(f"rejects: {Path(out) / 'rejects.csv'}")
    summary = robust_summary(store.catalog)
    if len(summary):
        console.print(summary.to_string(index=False))


@app.command("download")
def download_command(
    catalog: Path = typer.Option(..., "--catalog", help="Catalogue with id, ra, dec (and R90)."),
    out: Path = typer.Option(..., "--out", help="Folder for the cutouts (resumable)."),
    survey: str = typer.Option("sdss", help="sdss (SkyServer JPEG) | des | decals (Legacy Survey FITS)."),
    format: str = typer.Option("tidy", "--format", help="gz1 | gz2 | gzdecals | kaggle | tidy"),
    concurrency: int = typer.Option(4, help="Requests in flight at once."),
    timeout: float = typer.Option(30.0, help="Seconds per request (connect, read, and total)."),
    retries: int = typer.Option(4, help="Retries per cutout, with exponential backoff."),
    base_url: Optional[str] = typer.Option(None, help="Replace the cutout service address."),
    limit: Optional[int] = typer.Option(None, help="Fetch at most this many rows."),
) -> None:
    """Download cutouts (size ~10 x R90) for a catalogue of RA/Dec from the survey's service."""
    from morphtransfer.data.download import download

    res = download(
        catalog,
        out,
        survey=survey,
        format=format,
        concurrency=concurrency,
        timeout_s=timeout,
        retries=retries,
        base_url=base_url,
        limit=limit,
    )
    console.print(
        f"{res.n_ok} downloaded, {res.n_skipped} already on disk, {res.n_failed} failed "
        f"({res.seconds:.1f} s). Catalogue for ingest: {res.catalog_path}"
    )
    if res.n_failed:
        console.print(f"failures: {Path(out) / 'download_failures.csv'}")


# ---- end ingest, download -----------------------------------------------------------------

# ---- train, evaluate (issue 5) ------------------------------------------------------------
# fine-tuning's learning rate (the presets' [recipe.target] fine_tune_learning_rate): at the
# from-scratch 1e-3, tuning every layer on a few hundred galaxies first undoes the start model
FINE_TUNE_LR = 1e-4


@app.command("train")
def train_command(
    store: Path = typer.Option(..., "--store", help="Store with the training galaxies."),
    task: str = typer.Option(..., "--task", help="Q1 | Q2 | Q3"),
    out: Path = typer.Option(..., "--out", help="Model folder written (resumable)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Model to start from (default: scratch)."),
    trainable: str = typer.Option("all", "--trainable", help="all (every layer) | head (dense only)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="Seeded random subsample size."),
    epochs: int = typer.Option(50, "--epochs", help="Maximum epochs (the study: 50)."),
    patience: int = typer.Option(10, "--patience", help="Early-stopping patience; 0: none."),
    batch_size: int = typer.Option(30, "--batch-size", help="Batch size (the study: 30)."),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Adam learning rate; default 1e-3 from scratch (the study), 1e-4 with "
                           "--init (fine-tuning, as the study presets)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Rotations, shifts, flips, zoom."),
    precision: str = typer.Option(
        "32-true", "--precision",
        help="32-true | bf16-mixed (~2x faster on AVX-512 BF16 CPUs; see README for its AUC cost) "
             "| auto (bf16-mixed where bfloat16 is native, else 32-true) | 16-mixed"),
    seed: int = typer.Option(0, "--seed", help="Seed of subsample, split, init and batches."),
    split: Optional[str] = typer.Option(None, "--split", help="Only rows whose `split` is this."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different model in --out."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto | cpu | gpu"),
    devices: str = typer.Option(
        "1", "--devices", help="Processes per node (GPUs); >1 is DDP, --batch-size split over them."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines (DDP under torchrun/SLURM)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy: auto | ddp."),
) -> None:
    """Train DS18 on a Store's robust labels: from scratch, or fine-tune a model (all | head)."""
    import json as _json

    from morphtransfer.train import Recipe, select_split, train_model

    if lr is None:
        lr = FINE_TUNE_LR if init is not None else Recipe.learning_rate  # the study's 1e-3
    recipe = Recipe(max_epochs=epochs, early_stopping_patience=patience or None,
                    batch_size=batch_size, learning_rate=lr, augment=augment,
                    precision=precision, seed=seed)
    rows = select_split(store, split)
    path = train_model(store, task, rows=rows, init=init, trainable=trainable, recipe=recipe,
                       out=out, n_train=n_train, overwrite=overwrite, accelerator=accelerator,
                       devices=int(devices) if devices.isdigit() else devices,
                       num_nodes=num_nodes, strategy=strategy)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # DDP: the other processes run this command too; one summary
        return
    card = _json.loads((path / "card.json").read_text())
    console.print(
        f"{card['mode']} {card['task']} model -> {path}: {card['n_fit']} training + "
        f"{card['n_val']} validation galaxies, {card['epochs_run']} epochs, best epoch "
        f"{card.get('best_epoch')}, val loss {card.get('best_val_loss') or float('nan'):.4f}, "
        f"val AUC {card.get('val_auc', float('nan')):.3f}"
    )


@app.command("evaluate")
def evaluate_command(
    model: Path = typer.Option(..., "--model", help="Model folder."),
    store: Path = typer.Option(..., "--store", help="Store with robust labels to score on."),
    task: str = typer.Option(..., "--task", help="Q1 | Q2 | Q3"),
    split: Optional[str] = typer.Option(None, "--split", help="Only rows whose `split` is this."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    include_training: bool = typer.Option(
        False, "--include-training", help="Also score galaxies the model was trained on."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 where native, else 32-true) | 32-true | bf16-mixed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """TPR, precision, accuracy, AUC and confusion counts at P_th = 0.5 and a validation P_th."""
    import json as _json

    from rich.table import Table

    from morphtransfer.train import evaluate_model, select_split

    res = evaluate_model(model, store, task, rows=select_split(store, split), n_boot=n_boot,
                         seed=seed, exclude_training=not include_training, precision=precision)
    ms = res["thresholds"]
    table = Table(title=f"{res['task']} on {store}: {ms[0]['n']} galaxies, {ms[0]['n_pos']} "
                        f"positive (95% bootstrap intervals, {n_boot} resamples)")
    table.add_column("figure")
    for m in ms:
        rule = "validation" if m["threshold_rule"].startswith("validation") else "fixed"
        table.add_column(f"P_th {m['p_threshold']:.3f}\n{rule}", justify="right")
        table.add_column("95% interval", justify="center")
    for key, name in (("tpr", "TPR"), ("precision", "precision"), ("accuracy", "accuracy"),
                      ("auc", "AUC")):
        cells = []
        for m in ms:
            cells += [f"{m[key]:.3f}", f"{m[key + '_lo']:.3f}-{m[key + '_hi']:.3f}"]
        table.add_row(name, *cells)
    for key in ("tp", "fp", "tn", "fn"):
        table.add_row(key.upper(), *[c for m in ms for c in (str(m[key]), "")])
    console.print(table)
    if res["n_excluded_training"]:
        console.print(f"{res['n_excluded_training']} galaxies the model was trained on were left "
                      "out (--include-training keeps them)")
    if json_out is not None:
        json_out.write_text(_json.dumps(
            {"task": res["task"], "model": str(model), "store": str(store), "split": split,
             "n_excluded_training": res["n_excluded_training"], "thresholds": res["thresholds"]},
            indent=2))


# ---- end train, evaluate ------------------------------------------------------------------

# ---- run: the transfer study (issue 4) ----------------------------------------------------
@app.command("run")
def run_cmd(
    preset: str = typer.Option(
        "quick", "--preset", help="quick | paper | path to a .toml written like them"
    ),
    out: Path = typer.Option(Path("runs/quick"), "--out", help="run folder (re-running resumes)"),
    source: Optional[Path] = typer.Option(
        None, "--source", help="source-survey Store (default: simulate the SDSS/DES pair)"
    ),
    target: Optional[Path] = typer.Option(
        None, "--target", help="target-survey Store (without it: only the (0) rows)"
    ),
    target_votes: Optional[str] = typer.Option(
        None, "--target-votes",
        help="whose volunteers label the target galaxies: source (the same galaxy's source-survey "
        "label, as the study; default for the simulated pair) | target (the target survey's own "
        "votes; default for --source/--target Stores)",
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision",
        help="every training's precision, over the preset's: auto (bf16 where native, else "
        "float32; the quick preset's) | 32-true (float32: the same digits on every CPU kind "
        "matter more than time) | bf16-mixed",
    ),
) -> None:
    """The transfer study end to end: Table 2, Figure 2, the label-budget curves, report.html."""
    from morphtransfer.study import run_study

    try:
        run_study(preset=preset, out=out, source=source, target=target,
                  target_votes=target_votes, precision=precision, console=console)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: finished experiments are kept in {out}; run the same "
            "command again to resume",
            highlight=False,
        )
        raise typer.Exit(130)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(Path("runs/quick"),
                                   help="a study run folder (morphtransfer run --out)"),
) -> None:
    """Write a run's report again (Table 2, figures, metrics.json, report.html) from its
    predictions.parquet, training nothing: after an upgrade of the report, or a run whose report
    step was interrupted."""
    from morphtransfer.study import report_run

    report_run(run_dir, console=console)


# ---- end run ------------------------------------------------------------------------------

# ---- predict (issue 6) --------------------------------------------------------------------
@app.command(
    "predict",
    # `--models M1 M2 M3`: click options take one value each, so the values after the first land
    # in ctx.args and are collected below (repeating --models and commas work too).
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def predict(
    ctx: typer.Context,
    models: list[str] = typer.Option(..., "--models", help="Model folders, one per task."),
    out: Path = typer.Option(..., "--out", help="Catalogue file: .parquet or .fits."),
    store: Optional[Path] = typer.Option(None, "--store", help="A morphtransfer Store."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of FITS/JPEG/PNG cutouts."),
    catalog: Optional[Path] = typer.Option(
        None, "--catalog", help="Table (CSV/Parquet) with id [file, ra, dec, r90_arcsec]."),
    survey: Optional[str] = typer.Option(
        None, "--survey", help="Survey of --images cutouts (band order, pixel scale)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Model-input bands, e.g. g,r,i."),
    engine: str = typer.Option("local", "--engine", help="local or ray."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster address (e.g. auto); none starts a local Ray."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: 1/GPU)."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Images read per batch."),
    shard_size: int = typer.Option(16384, "--shard-size", help="Galaxies per resumable shard."),
    mc_dropout: int = typer.Option(0, "--mc-dropout", help="N passes with dropout on: p_<task>_std."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 where native, else 32-true), 32-true or bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte Carlo dropout masks."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Classify every galaxy with every model in one pass; resumable (re-run to continue)."""
    from morphtransfer.predict import predict_catalog, read_provenance, rejects_path

    extra = list(ctx.args)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        raise InputError(f"unknown option(s) {unknown}; see `morphtransfer predict --help`")
    names = [m.strip() for v in [*models, *extra] for m in v.split(",") if m.strip()]
    try:
        path = predict_catalog(
            names, out, store=store, images=images, catalog=catalog, batch_size=batch_size,
            engine=engine, address=address, mc_dropout=mc_dropout, precision=precision,
            shard_size=shard_size, progress=progress, seed=seed, num_workers=workers,
            survey=survey, bands=[b.strip() for b in bands.split(",")] if bands else None,
        )
    except KeyboardInterrupt:
        from morphtransfer.predict import parts_dir

        console.print(f"interrupted; finished shards are kept in {parts_dir(out)}: run the same "
                      "command again to resume")
        raise typer.Exit(130)
    prov = read_provenance(path)
    console.print(
        f"{prov['n_galaxies']} galaxies classified -> {path}; "
        f"{prov['n_rejected']} rejected -> {rejects_path(path)}"
    )


# ---- end predict --------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point: bad input is one red line, not a traceback."""
    try:
        app()
    except InputError as exc:
        from rich.markup import escape

        # messages name config sections like [labels]: print them, not read them as markup
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
