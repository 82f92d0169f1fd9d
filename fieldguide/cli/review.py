"""``fieldguide review``: a curator's decisions from the shell, and where the review queue stands."""

from __future__ import annotations

from typing import Optional

import typer

from fieldguide.cli.common import echo_json as _echo_json, project as _project

review_app = typer.Typer(help="Decide flagged samples (as in the App) and see the review states.",
                         no_args_is_help=True)


def _show(report, as_json: bool) -> None:
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"{report.samples} sample(s): {report.changed} changed, {report.confirmed} confirmed; "
               f"Label Studio tasks closed {report.closed_tasks} (run {report.run_id})")
    for line in report.problems:
        typer.echo(f"  {line}")


@review_app.command("set")
def review_set(
    label: str = typer.Argument(..., help="The label (a class of the project)."),
    sample_ids: list[str] = typer.Argument(..., help="Sample ids (as in the App or 'signals export')."),
    actor: Optional[str] = typer.Option(None, help="Who decides (default: project.curator)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Set the label of samples: resolved (or dismissed when it is already their label); their
    Label Studio tasks are closed."""
    from fieldguide.platform.review import decide

    _show(decide(_project(), dict.fromkeys(sample_ids, label), actor=actor), as_json)


@review_app.command("confirm")
def review_confirm(
    sample_ids: list[str] = typer.Argument(..., help="Sample ids whose given label is right."),
    actor: Optional[str] = typer.Option(None, help="Who decides (default: project.curator)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Confirm the given labels (dismissed: they leave the queue until the evidence changes)."""
    from fieldguide.platform.review import confirm

    _show(confirm(_project(), sample_ids, actor=actor), as_json)


@review_app.command("status")
def review_status(
    top: int = typer.Option(0, min=0, help="Also list the first TOP samples of the review queue."),
    order: Optional[str] = typer.Option(
        None, help="The queue's order: noise_score | error_rank | cost | unknown_score "
                   "(default: curation.review_order)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """How many samples are in each review state; with --top, the head of the review queue (its
    error_rank: the rank at which the label and the evidence part)."""
    from fieldguide.platform.review import counts, queue
    from fieldguide.platform.store import dataset

    project = _project()
    ds = dataset(project, create=False)
    states = counts(ds)
    rows = queue(ds, order=order or project.config.curation.review_order, limit=top).to_dict("records") if top else None
    if as_json:
        _echo_json(states if rows is None else {"states": states, "queue": rows})
        return
    typer.echo("  ".join(f"{k} {v}" for k, v in states.items()))
    for r in rows or []:
        score = "-" if r["noise_score"] is None else f"{r['noise_score']:.3f}"
        typer.echo(f"  {r['id']}  {score}  {r['label']} -> {r['consensus'] or r['predicted']}  "
                   f"error at {r['error_rank'] or '-'}  ({r['review_state']}; {r['reason'] or '-'})")
