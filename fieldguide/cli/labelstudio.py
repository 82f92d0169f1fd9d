"""``fieldguide labelstudio`` and ``fieldguide relabel``: the project's Label Studio server, and flagged
samples sent to it and their answers taken back."""

from __future__ import annotations

from typing import Optional

import typer

from fieldguide.cli.common import echo_json as _echo_json, project as _project

labelstudio_app = typer.Typer(help="The project's Label Studio server.", no_args_is_help=True)
relabel_app = typer.Typer(help="Send flagged samples to Label Studio and take the answers back.",
                          no_args_is_help=True)


@labelstudio_app.command("start")
def labelstudio_start(
    port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: labelstudio.port)."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for /health (the first start migrates)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Start the project's Label Studio (127.0.0.1, data under PROJECT/labelstudio)."""
    from fieldguide.platform.labelstudio import start

    info = start(_project(), port=port, timeout_s=timeout)
    if as_json:
        _echo_json(info.as_dict())
        return
    typer.echo(f"Label Studio {info.message} at {info.url} (pid {info.pid})")  # running | already running
    typer.echo(f"log in as {info.username}; password in {info.data_dir}/credentials.json")
    typer.echo(f"database: {info.database}")


@labelstudio_app.command("stop")
def labelstudio_stop() -> None:
    """Stop the project's Label Studio (its whole process group)."""
    from fieldguide.platform.labelstudio import stop

    typer.echo("Label Studio stopped" if stop(_project()) else "Label Studio was not running")


@labelstudio_app.command("status")
def labelstudio_status(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Is the project's Label Studio running, and where (the token is never shown)."""
    from fieldguide.platform.labelstudio import status as ls_status

    info = ls_status(_project())
    if as_json:
        _echo_json(info.as_dict())
        return
    typer.echo(f"Label Studio {'running' if info.running else 'stopped'}"
               + (f" at {info.url}" if info.url else "") + (f": {info.message}" if info.message else ""))
    if info.database:  # the project's own server: sqlite PATH | postgresql://user@host:port/name
        typer.echo(f"database: {info.database}")
    if not info.running:
        raise typer.Exit(3)


@labelstudio_app.command("listen")
def labelstudio_listen(
    port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: labelstudio.webhook_port)."),
) -> None:
    """Receive Label Studio's annotation webhooks and pull each answered task (Ctrl-C stops)."""
    from fieldguide.platform.labelstudio import listen

    def show(task_ids, report):
        typer.echo(f"tasks {', '.join(map(str, task_ids))}: applied {report.applied} "
                   f"(changed {report.changed}, accepted {report.accepted}, unsure {report.unsure}, "
                   f"skipped {report.skipped})" + (f"; conflicts {report.conflicts}" if report.conflicts else ""))
        for line in report.problems:
            typer.echo(f"  {line}")

    typer.echo("listening for Label Studio webhooks (Ctrl-C to stop)")
    listen(_project(), port=port, on_report=show)


@relabel_app.command("push")
def relabel_push(
    view: str = typer.Option("to_review", help="The saved view to push."),
    limit: Optional[int] = typer.Option(None, help="Push at most the first N samples of the view."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Send the samples of a saved view to Label Studio (a sample never gets two tasks)."""
    from fieldguide.platform.labelstudio import push

    report = push(_project(), view=view, limit=limit)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"pushed {report.pushed}, already pushed {report.already_pushed} "
               f"(Label Studio project {report.project_id} at {report.url})")
    if report.decided_before:
        typer.echo(f"  {len(report.decided_before)} sample(s) queued again after a decision keep their answered "
                   "Label Studio task (one task per sample): decide them in the App or with 'fieldguide review "
                   f"set|confirm' (e.g. {report.decided_before[0]})")


@relabel_app.command("pull")
def relabel_pull(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Apply the curators' answers from Label Studio (re-running applies nothing twice)."""
    from fieldguide.platform.labelstudio import pull

    report = pull(_project())
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"applied {report.applied}: changed {report.changed}, accepted {report.accepted}, "
               f"unsure {report.unsure}, skipped {report.skipped}; waiting {report.pending}, "
               f"already applied {report.unchanged}" + (f"; conflicts {report.conflicts}" if report.conflicts else "")
               + (f"; answered above the classes (label kept) {report.coarse}" if report.coarse else "")
               + (f"; new classes {', '.join(report.new_classes)}" if report.new_classes else ""))
    for line in report.problems:
        typer.echo(f"  {line}")
