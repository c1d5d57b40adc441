"""``hydrolayer campaign run|status|snapshot|propose``: campaigns from a YAML spec (``hydrolayer.campaign``)."""

from __future__ import annotations

from pathlib import Path

from .common import add_action, add_md_parallel_args


class CLICommand:
    """many simulations from a YAML spec on Dask or SLURM, resumable"""

    name = "campaign"
    example = (
        "hydrolayer campaign run examples/campaign-tiny.yaml --db /tmp/tiny/sim.db\n"
        "hydrolayer campaign status examples/campaign-tiny.yaml --db /tmp/tiny/sim.db"
    )

    @staticmethod
    def add_arguments(parser):
        sub = parser.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
        r = add_action(
            sub,
            "run",
            "run every unfinished job of a spec (again: skips finished, resumes interrupted)",
            "hydrolayer campaign run examples/dataset-v0.yaml --db data/simulations.db\n"
            "hydrolayer campaign run spec.yaml --db sims.db --scheduler tcp://10.0.0.5:8786\n"
            "hydrolayer campaign run spec.yaml --db sims.db --slurm --partition compute --cores 4 --walltime 12:00:00 --jobs 8",
            _run,
        )
        r.add_argument("spec", type=Path, help="campaign YAML")
        r.add_argument(
            "--db", required=True, help="database file or postgresql:// URL (then also --grids and --workdir)"
        )
        r.add_argument(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a LocalCluster fitted to the cores)",
        )
        r.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: cores // ranks)")
        r.add_argument("--grids", type=Path, default=None, help="grids folder (default: grids/ beside the database)")
        r.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="job folders, on a file system every worker shares (default: work/ beside the database)",
        )
        add_md_parallel_args(r)
        g = r.add_argument_group(
            "SLURM (dask-jobqueue; each option also in the spec's cluster: section, the command line wins)"
        )
        where = g.add_mutually_exclusive_group()
        where.add_argument("--slurm", action="store_true", default=None, help="run the Dask workers as SLURM jobs")
        where.add_argument(
            "--local", dest="slurm", action="store_false", help="ignore the spec's cluster: kind: slurm and run here"
        )
        g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
        g.add_argument("--account", default=None, help="SLURM account")
        g.add_argument(
            "--cores",
            type=int,
            default=None,
            help="CPUs per SLURM job (default: --ranks); it runs cores // ranks simulations side by side",
        )
        g.add_argument("--memory", default=None, help="memory per SLURM job, e.g. 8GB (default: 2GB per simulation)")
        g.add_argument(
            "--walltime",
            default=None,
            help="per SLURM job, e.g. 24:00:00 (default); a job that reaches it resumes in a new one",
        )
        g.add_argument("--jobs", type=int, default=None, help="at most this many SLURM jobs at once (default 16)")

        s = add_action(
            sub,
            "status",
            "state of every job of a spec: where it runs, its progress, its last log line",
            "hydrolayer campaign status examples/dataset-v0.yaml --db data/simulations.db",
            _status,
        )
        s.add_argument("spec", type=Path, help="campaign YAML")
        s.add_argument("--db", required=True, help="database file or postgresql:// URL (then also --workdir)")
        s.add_argument("--workdir", type=Path, default=None, help="job folders (default: work/ beside the database)")

        k = add_action(
            sub,
            "snapshot",
            "copy the checkpoints of unfinished jobs to checkpoints/ beside the database (to move jobs to another "
            "machine; the next run resumes from it)",
            "hydrolayer campaign snapshot examples/dataset-v0.yaml --db data/simulations.db\n"
            "rsync -a data/checkpoints/ other-machine:hydrolayer/data/checkpoints/   # then campaign run there",
            _snapshot,
        )
        k.add_argument("spec", type=Path, help="campaign YAML")
        k.add_argument("--db", required=True, help="database file")
        k.add_argument("--workdir", type=Path, default=None, help="job folders (default: work/ beside the database)")

        p = add_action(
            sub,
            "propose",
            "rank candidate pair-vacancy surfaces by an ensemble's disagreement and write the top K as a campaign spec "
            "(skips surfaces the database already holds)",
            "hydrolayer campaign propose --model runs/ens/ensemble.json --db data/simulations.db --top 4 --out next.yaml\n"
            "hydrolayer campaign run next.yaml --db data/simulations.db",
            _propose,
        )
        p.add_argument("--model", required=True, help="ensemble: a shipped ensemble's name or a .json manifest")
        p.add_argument("--db", required=True, help="simulation database (its rows count as already simulated)")
        p.add_argument("--top", type=int, required=True, metavar="K", help="how many candidates the spec gets")
        p.add_argument("--out", type=Path, required=True, help="campaign spec to write (YAML); scores beside it")
        p.add_argument(
            "--candidates",
            type=Path,
            default=None,
            help="YAML with a 'candidates' list (default: calcite-104 5x3x4 and aragonite-010 5x4x3, 1-6 pairs, "
            "three placements; see hydrolayer.proposal)",
        )
        p.add_argument("--production-ps", type=float, default=200.0, help="production time of each proposed run (ps)")

    @staticmethod
    def run(args):
        args.func(args)


def _run(args):
    from ..campaign import run_campaign

    slurm_options = {k: getattr(args, k) for k in ("partition", "account", "cores", "memory", "walltime", "jobs")}
    counts = run_campaign(
        args.spec,
        args.db,
        scheduler=args.scheduler,
        workers=args.workers,
        ranks=args.ranks,
        threads=args.threads,
        grids_dir=args.grids,
        workdir=args.workdir,
        slurm=args.slurm,
        slurm_options=slurm_options,
    )
    print(f"campaign: {counts['done']} stored, {counts['failed']} failed, {counts['skipped']} already done")


def _status(args):
    from ..campaign import format_status

    print(format_status(args.spec, args.db, workdir=args.workdir))


def _snapshot(args):
    from ..campaign import snapshot_campaign

    snaps = snapshot_campaign(args.spec, args.db, workdir=args.workdir)
    print(f"{len(snaps)} job snapshot(s) written")


def _propose(args):
    from ..proposal import format_ranking, propose

    result = propose(
        args.model,
        args.db,
        args.top,
        args.out,
        candidates=args.candidates,
        production_ps=args.production_ps,
        log=lambda line: print(line, flush=True),
    )
    print(format_ranking(result))
