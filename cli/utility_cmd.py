"""``meterchain utility pull|verify``: a utility fetches its signed batches and checks them offline
(docs/utility-guide.md). Verification is ``contract/utility_batch.py``; this is its shell."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import typer
from meterchain.cli.verify_cmd import read_log_key, read_policy
from meterchain.contract.utility_batch import BatchError, VerifiedPage, verify_page
from rich.console import Console
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, help="Pull and verify signed batches (utilities).")
console = Console(highlight=False)


def _report(name: str, page: VerifiedPage) -> None:
    points = sum(1 for e in page.entries if e.point is not None)
    console.print(f"[green]OK[/green] {name}: {len(page.entries)} readings ({points} with their metering "
                  f"point proven), leaves [{page.size_from}, {page.size_to}), next {page.next}"
                  + (f"; witnesses: {', '.join(page.cosigners)}" if page.cosigners else ""))


@app.command("verify")
def verify(
    pages: list[Path] = typer.Argument(  # noqa: B008 - typer reads its defaults
        ..., help="Batch pages (JSON or CBOR) as the API returns them."),
    log_key: str = typer.Option(..., "--log-key", help="The log's public key or a file holding it."),
    policy_file: Path | None = typer.Option(  # noqa: B008 - typer reads its defaults
        None, "--policy", help="A witness policy (C2SP tlog-policy): require its quorum on each page."),
) -> None:
    """Check batch pages offline; exit 0 only if every page verifies."""
    verifier = read_log_key(log_key)
    policy = read_policy(policy_file)
    failed = False
    for path in pages:
        try:
            _report(str(path), verify_page(path.read_bytes(), verifier, policy))
        except OSError as exc:
            console.print(f"[red]FAIL[/red] {path}: cannot read ({exc.strerror})")
            failed = True
        except BatchError as exc:
            console.print(f"[red]FAIL[/red] {path}: {escape(exc.diagnostics())}")
            failed = True
    raise typer.Exit(1 if failed else 0)


@app.command("pull")
def pull(
    api: str = typer.Option(..., "--api", help="The backend, e.g. https://backend.example"),
    key: str = typer.Option(..., "--key", envvar="MC_API_KEY", help="Your API key (or MC_API_KEY)."),
    log_key: str = typer.Option(..., "--log-key", help="The log's public key you pinned."),
    out: Path = typer.Option(Path("."), "--out", help="Directory for the verified pages."),  # noqa: B008
    start: int = typer.Option(0, "--from", min=0, help="Tree size you have already (0: all)."),
    limit: int = typer.Option(500, "--limit", min=1, max=1000),
    policy_file: Path | None = typer.Option(  # noqa: B008 - typer reads its defaults
        None, "--policy", help="A witness policy (C2SP tlog-policy): require its quorum on each page."),
) -> None:
    """Fetch, verify and store (as CBOR) every page from --from to the newest checkpoint.

    Files are batch-FROM-TO-CURSOR.cbor; the last line says what to pass as --from next time.
    """
    verifier = read_log_key(log_key)
    policy = read_policy(policy_file)
    out.mkdir(parents=True, exist_ok=True)
    to: int | None = None
    cursor: int | None = start
    total = 0
    while cursor is not None:
        query = f"from={start}&cursor={cursor}&limit={limit}&format=cbor" + (f"&to={to}" if to else "")
        request = urllib.request.Request(f"{api.rstrip('/')}/api/v1/utility/batch?{query}",
                                         headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                data = answer.read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                error = json.loads(body)
                message = f"{error['error']}: {error['detail']} ({error['hint']})"
            except (ValueError, KeyError, TypeError):
                message = body[:300]
            console.print(f"[red]FAIL[/red] HTTP {exc.code}: {escape(message)}")
            raise typer.Exit(2) from None
        except (urllib.error.URLError, OSError) as exc:
            console.print(f"[red]FAIL[/red] cannot reach {api}: {escape(str(exc))}")
            raise typer.Exit(2) from None
        try:
            page = verify_page(data, verifier, policy)
        except BatchError as exc:
            console.print(f"[red]FAIL[/red] page at cursor {cursor}: {escape(exc.diagnostics())}")
            raise typer.Exit(1) from None
        to = page.size_to
        name = f"batch-{start}-{to}-{cursor}.cbor"
        (out / name).write_bytes(data)
        _report(name, page)
        total += len(page.entries)
        cursor = page.next
    console.print(f"{total} readings verified; next time: --from {to}")
