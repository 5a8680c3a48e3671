"""``make report``: one self-contained HTML report of a local run or a SageMaker training job.

    python -m scripts.report --run OUT_DIR --out report.html       # a local run (make train-local, make demo)
    python -m scripts.report --job JOB_NAME --out report.html      # a SageMaker training job

A job is found with the launchers' AWS settings (``scripts.aws.settings``: options, environment,
``launch.toml``); its evidence in S3 (``output.tar.gz``, or the live copy beside its checkpoint while
it runs, and SageMaker Debugger's tensors if it used Debugger) is mirrored to ``--cache`` and read
locally.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scripts import CACHE_DIR
from scripts.aws import settings
from scripts.report.document import print_outcomes, write_report
from scripts.report.sources import load_local_run, load_training_job

DEFAULT_JOB_CACHE = CACHE_DIR / "report-jobs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="the OUT folder of a local training run")
    source.add_argument("--job", help="the name of a SageMaker training job")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file to write")
    parser.add_argument("--cache", "--tensors-cache", type=Path, default=DEFAULT_JOB_CACHE,
                        help="where a job's evidence from S3 is mirrored (<cache>/<job>) before it is read")
    settings.add_config_arguments(parser)
    args = parser.parse_args(argv)

    try:
        if args.run is not None:
            evidence = load_local_run(args.run)
        else:
            context = settings.connect(args)
            os.environ["AWS_REGION"] = context.config.region  # smdebug's S3 reader reads only this
            evidence = load_training_job(
                args.job, context.client("sagemaker"), context.client("s3"), cache_dir=args.cache
            )
    except (FileNotFoundError, ValueError, *settings.USER_ERRORS) as error:
        raise SystemExit(f"report: {error}") from error
    report = write_report(evidence, args.out)
    print_outcomes(report)
    print(f"report written: {args.out.resolve()}")


if __name__ == "__main__":
    main(sys.argv[1:])
