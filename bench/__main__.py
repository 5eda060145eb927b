"""`python -m bench gen [--scale S]` writes the dataset; `python -m bench run [--quick] ...` measures."""

from __future__ import annotations

import argparse
import sys

from bench import dataset

QUICK_SCALE = 0.25


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("gen", help="generate the dataset under bench/data/")
    _dataset_args(gen)
    gen.add_argument("--force", action="store_true", help="regenerate even if present")
    run = sub.add_parser("run", help="measure c3fs, native disk and the peers on the dataset")
    _dataset_args(run)
    run.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE} (make bench)")
    run.add_argument("--repeat", type=int, default=3, help="repeats per tool (median, min-max)")
    run.add_argument("--tools", default="", help="comma list (default: all installed): "
                     "c3fs,native,restic,borg,squashfs,casync")
    run.add_argument("--s3", action="store_true", help="also push/pull against a local moto server")
    run.add_argument("--s3-repeat", type=int, default=None,
                     help="repeats of the S3 figures (default: --repeat; moto is slow)")
    sub.add_parser("scale", help="how costs grow with files and jobs (python -m bench scale -h)",
                   add_help=False)
    sub.add_parser("remote", help="c3fs on S3 behind a 20 ms proxy, beside rclone, s3fs, boto3 "
                   "(python -m bench remote -h)", add_help=False)
    readme = sub.add_parser("readme", help="copy a run's tables into bench/README.md")
    readme.add_argument("results", nargs="?", help="results JSON (default: the newest)")
    run.add_argument("--keep-work", action="store_true", help="keep bench/work/ afterwards")
    return parser


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=float, default=None,
                        help="multiplies checkpoint size and file counts (default 1, quick 0.25)")
    parser.add_argument("--small-files", type=int, default=None,
                        help="number of small text files (default 10,000 × scale)")
    parser.add_argument("--seed", type=int, default=42)


def params_from(args: argparse.Namespace) -> dataset.Params:
    scale = args.scale if args.scale is not None else (
        QUICK_SCALE if getattr(args, "quick", False) else 1.0)
    small = args.small_files if args.small_files is not None else max(10, round(10_000 * scale))
    return dataset.Params(scale=scale, seed=args.seed, small_files=small)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:  # its own options: python -m bench scale --help
        from bench import scale

        return scale.main(argv[1:])
    if argv[:1] == ["remote"]:  # its own options: python -m bench remote --help
        from bench import remote

        return remote.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "readme":
        return _readme(args.results)
    params = params_from(args)
    if args.command == "gen":
        manifest = dataset.generate(params, force=args.force)
        print(f"{manifest.root}: {manifest.bytes_v1 / 1e6:.0f} MB in {len(manifest.files())} files; "
              f"v2 changes {manifest.changed_region_bytes / 1e6:.1f} MB of regions "
              f"({manifest.differing_bytes / 1e6:.1f} MB differing bytes)")
        return 0
    from bench import run

    return run.main(args, params)


def _readme(path: str | None) -> int:
    import json
    from pathlib import Path

    from bench import report

    source = Path(path) if path else report.latest_results()
    report.update_readme(json.loads(source.read_text()))
    print(f"bench/README.md updated from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
