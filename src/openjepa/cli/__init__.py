"""`openjepa` command line: parsing only; the work is done by functions anyone can call."""

from __future__ import annotations

import signal
import sys

from ..engine import Preempted, TrainingError
from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PREEMPTED, BadInput
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (argparse takes a positional list only before them)
    if (
        rest
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in r and not r.startswith("-") for r in rest)
    ):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except BadInput as e:  # ConfigError, DataError, CheckpointError: the user's input, said in one line
        print(f"openjepa: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as e:
        print(f"openjepa: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED if e.signum == signal.SIGINT else EXIT_PREEMPTED
    except TrainingError as e:
        print(f"openjepa: training stopped: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("openjepa: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Anything else (an error inside torch, numpy, a loader worker, ...) is a bug or a machine failure:
    # its traceback is what a report needs, so it is not caught here.


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
