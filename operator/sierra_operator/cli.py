"""`sierra-operator` command line: local | validate | crd | version."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from sierra_operator import __version__

EXIT_BAD_INPUT = 2
EXIT_INFRASTRUCTURE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sierra-operator",
        description="Run SIERRA batch experiments on Prefect: in Kubernetes (operator) or on "
        "this machine (local).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser(
        "local",
        help="run a SierraBatch on this machine with its own Prefect server",
        description="Run a SierraBatch here: a private Prefect server on a free port (or "
        "--prefect-api-url), process workers, experiments one after another, the runs of "
        "one experiment in parallel (at most execution.parallelism). Exit 0 only if every "
        "run succeeded; 1 if runs failed; 2 on bad input; 3 if Prefect could not be used; "
        "130 if interrupted.",
    )
    local.add_argument("batch", type=Path, help="SierraBatch YAML file")
    local.add_argument(
        "--sierra-root",
        type=Path,
        default=Path("sierra-root"),
        help="directory used as --sierra-root (default: ./sierra-root)",
    )
    local.add_argument("--prefect-api-url", help="use this Prefect server instead of starting one")
    local.add_argument("--pool", help="work pool name (default: sierra-pool)")
    local.add_argument("--queue", help="work queue name (default: sierra-queue)")
    local.add_argument(
        "--workers", type=int, help="process workers (default: spec.execution.workers)"
    )
    local.add_argument(
        "--resume",
        action="store_true",
        help="do not re-run runs recorded as succeeded under sierra-root",
    )
    local.add_argument(
        "--server-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the Prefect server to answer (default: 300)",
    )

    run = sub.add_parser(
        "run",
        help="run the Kubernetes operator (kopf; same as `kopf run -m sierra_operator.handlers`)",
        description="Reconcile SierraBatch resources. Settings come from SIERRA_OPERATOR_* "
        "environment variables (see the README).",
    )
    run.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch this namespace (repeatable; default SIERRA_OPERATOR_NAMESPACES, else all)",
    )
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint (default: http://0.0.0.0:8080/healthz)",
    )

    validate = sub.add_parser("validate", help="check a SierraBatch file and print its plan")
    validate.add_argument("batch", type=Path)
    validate.add_argument("--sierra-root", type=Path, default=Path("sierra-root"))

    sub.add_parser("crd", help="print the CustomResourceDefinition generated from the model")
    sub.add_parser("version", help="print the version")
    return parser


def _validate(args: argparse.Namespace, console: Console) -> int:
    from sierra_operator.loader import load

    loaded = load(args.batch, args.sierra_root.resolve())
    console.print(f"{args.batch}: valid; batch root {loaded.batch_root}")
    for exp in loaded.plan.experiments:
        console.print(f"  {exp.name}: {len(exp.runs)} run(s)", highlight=False)
    return 0


def _run_operator(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from sierra_operator import handlers

    namespaces = args.namespace or handlers.SETTINGS.namespaces
    kopf.configure(verbose=handlers.SETTINGS.log_level == "DEBUG")
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def _local(args: argparse.Namespace, console: Console) -> int:
    from sierra_operator.loader import load

    if args.workers is not None and args.workers < 1:
        console.print("--workers: must be at least 1")
        return EXIT_BAD_INPUT
    sierra_root = args.sierra_root.resolve()
    loaded = load(args.batch, sierra_root)  # all validation before anything starts
    sierra_root.mkdir(parents=True, exist_ok=True)
    # A private Prefect home before prefect is imported: never read or write the user's profile.
    home = Path(tempfile.mkdtemp(prefix="sierra-operator-prefect-"))
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_PROFILES_PATH"] = str(home / "profiles.toml")
    os.environ.pop("PREFECT_API_URL", None)
    from sierra_operator.local import LocalError, LocalOptions, LocalRun
    from sierra_operator.prefect_api import PoolConflict
    from sierra_operator.server import ServerStartError

    opts = LocalOptions(
        sierra_root=sierra_root,
        prefect_api_url=args.prefect_api_url,
        pool=args.pool,
        queue=args.queue,
        workers=args.workers,
        resume=args.resume,
        server_timeout=args.server_timeout,
    )
    try:
        result = LocalRun(loaded, opts, console, home=home).run()
    except (LocalError, PoolConflict, ServerStartError) as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return EXIT_INFRASTRUCTURE
    if result.failed_runs:
        console.print(
            "failed runs: " + ", ".join(f"{e}/run{i}" for e, i in result.failed_runs),
            highlight=False,
        )
    console.print(f"status: {result.status_file}", highlight=False)
    if result.timings:
        spent = (f"{k.replace('_', ' ')} {v:.1f}s" for k, v in result.timings.items())
        console.print(
            "timings: " + ", ".join(spent),
            highlight=False,
            soft_wrap=True,
        )
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    from sierra_operator.model import SpecError

    try:
        if args.command == "version":
            console.print(__version__)
            return 0
        if args.command == "crd":
            from sierra_operator.crd import render_crd_yaml

            sys.stdout.write(render_crd_yaml())
            return 0
        if args.command == "validate":
            return _validate(args, console)
        if args.command == "run":
            return _run_operator(args)
        return _local(args, console)
    except SpecError as exc:
        err.print(f"[bold red]invalid batch:[/]\n{exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
