"""``python -m chaos.run``: run the chaos suite and print its table.

    python -m chaos.run                       # the short variant (what CI runs), a random seed
    python -m chaos.run --long                # the long one; rewrites docs/reliability.md's table
    python -m chaos.run --seed 1234 --scenario kills   # replay one scenario of a failed run

Needs PostgreSQL (``AWS_RECONCILER_TEST_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``) and the sandbox installed. Exits 0 when every
guarantee held, 1 when one did not (the findings are printed, with the seed to replay them).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "prepare_airflow"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def _log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare_airflow(home: Path) -> None:
    """Airflow's environment for the in-process executors: a throwaway home and database, a JWT
    secret (every executor's constructor needs one). Before Airflow is first imported."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW_CONFIG"] = str(home / "airflow.cfg")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # The executors log through Airflow's structlog straight to stdout, where the table goes:
    # only their warnings and errors (database trouble) are worth interleaving with it.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(48))


def _parser() -> argparse.ArgumentParser:
    from .scenarios import LONG

    parser = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="the long variant (10-30 minutes) instead of the short")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed, printed)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in LONG],
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario, seeds seed, seed+1, ...")
    parser.add_argument("--work-dir", type=Path, default=None, help="logs and Airflow's home (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory after a clean run")
    parser.add_argument(
        "--write",
        type=Path,
        default=None,
        help=f"write the table into this document (default with --long: {DOCS.relative_to(DOCS.parent.parent)})",
    )
    parser.add_argument("--no-write", action="store_true", help="with --long, do not touch docs/reliability.md")
    parser.add_argument("--note", default=None, help="a line put above the table (e.g. the commit that was run)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 when every guarantee held."""
    args = _parser().parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    work_dir: Path = args.work_dir or Path(tempfile.mkdtemp(prefix="aws-reconciler-chaos-"))
    prepare_airflow(work_dir / "airflow")
    # Airflow is imported from here on.
    from .report import render, write_section
    from .scenarios import variant
    from .suite import run_scenario

    name = "long" if args.long else "short"
    scenarios = [s for s in variant(args.long) if not args.scenario or s.name in args.scenario]
    replay = f"python -m chaos.run{' --long' if args.long else ''} --seed {seed}"
    _log(f"{name} variant, seed {seed} (replay: {replay}); work directory {work_dir}")
    results = []
    for scenario in scenarios:
        total = None
        for n in range(args.repeat):
            run_seed = seed + n
            _log(f"scenario {scenario.name} (seed {run_seed}): {scenario.summary}")
            result = run_scenario(scenario, seed=run_seed, work_dir=work_dir / f"{scenario.name}-{run_seed}", log=_log)
            findings = [d for v in result.verdicts.values() for d in v.details]
            for line in findings[:50]:
                _log(f"  {line}")
            _log(f"  {scenario.name}: {len(findings)} finding(s) in {result.seconds:.0f} s")
            if total is None:
                total = result
            else:
                total.add(result)
        assert total is not None
        results.append(total)
    text = render(results, scenarios, variant=name, seed=seed)
    if args.note:
        text = f"{args.note}\n\n{text}"
    print(text)
    target = args.write if args.write is not None else (DOCS if args.long and not args.no_write else None)
    if target is not None:
        write_section(target, text)
        _log(f"table written to {target}")
    failed = sum(r.violations for r in results)
    if failed:
        _log(f"{failed} guarantee violation(s); replay with: {replay}; logs in {work_dir}")
        return 1
    if args.work_dir is None and not args.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
