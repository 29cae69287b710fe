"""What every benchmark here shares: ``--json``, which prints the run's figures as one JSON object
on the last line (after the human-readable table), so runs can be compared by a script."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="also print the figures as one JSON object on the last line")


def print_json(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """The last line of the run, if ``--json`` was given: one object, on one line."""
    if args.json:
        print(json.dumps(figures, sort_keys=True), flush=True)
