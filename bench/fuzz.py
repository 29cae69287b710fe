"""Long fuzz run over every decoder of untrusted input (the targets of ``tests/fuzz_targets.py``).

Each input is a random mutation of one of a target's valid samples (one in eight is plain random
bytes), drawn from ``random.Random(seed)``; the keys behind the samples are fresh each run, so
a seed repeats the mutations, not the exact bytes (a foreign exception prints its input in hex).
Inputs are spread evenly over the targets. Prints per target: inputs, refused with our own error, accepted, and foreign
exceptions (grouped by type and the line that raised them, with one input that triggers each);
exits 1 if any foreign exception appeared.

    python bench/fuzz.py --inputs 1000000          # or --seconds 60; --json for machine output
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402
from tests.fuzz_targets import Target, mutate, outcome, targets  # noqa: E402

BATCH = 100


class Tally:
    """What one target did with its inputs."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.inputs = self.refused = self.accepted = 0
        self.foreign: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.seconds = 0.0

    def run(self, data: bytes) -> None:
        self.inputs += 1
        result = outcome(self.target, data)
        if result == "refused":
            self.refused += 1
        elif result == "accepted":
            self.accepted += 1
        else:
            frame = traceback.extract_tb(result.__traceback__)[-1]
            where = f"{type(result).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            self.foreign[where] += 1
            self.examples.setdefault(where, data[:200].hex())

    def as_dict(self) -> dict[str, object]:
        return {"target": self.target.name, "inputs": self.inputs, "refused": self.refused,
                "accepted": self.accepted, "foreign": sum(self.foreign.values()),
                "foreign_kinds": dict(self.foreign), "examples_hex": self.examples,
                "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else None}


def fuzz(tallies: list[Tally], rng: random.Random, *, inputs: int | None, seconds: float | None) -> None:
    """Round-robin over the targets in batches until each has its share of ``inputs`` or
    ``seconds`` have passed."""
    deadline = time.monotonic() + seconds if seconds else None
    n = len(tallies)
    quota = None if inputs is None else [inputs // n + (i < inputs % n) for i in range(n)]
    while deadline is None or time.monotonic() < deadline:
        busy = False
        for i, tally in enumerate(tallies):
            count = BATCH if quota is None else min(BATCH, quota[i] - tally.inputs)
            if count <= 0:
                continue
            busy = True
            started = time.perf_counter()
            for _ in range(count):
                sample = rng.choice(tally.target.samples)
                tally.run(rng.randbytes(rng.randrange(len(sample) + 8)) if rng.random() < 0.125
                          else mutate(sample, rng))
            tally.seconds += time.perf_counter() - started
        if not busy:
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, help="total inputs over all targets")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("--seed", type=int, default=1)
    add_json_flag(parser)
    args = parser.parse_args()
    if args.inputs is None and args.seconds is None:
        args.inputs = 100_000
    tallies = [Tally(target) for target in targets()]
    started = time.monotonic()
    fuzz(tallies, random.Random(args.seed), inputs=args.inputs, seconds=args.seconds)
    elapsed = time.monotonic() - started
    foreign = sum(sum(t.foreign.values()) for t in tallies)
    print(f"{'target':34} {'inputs':>9} {'our errors':>10} {'accepted':>9} {'foreign':>8} {'inputs/s':>9}")
    for t in tallies:
        row = t.as_dict()
        print(f"{t.target.name:34} {t.inputs:>9} {t.refused:>10} {t.accepted:>9} {row['foreign']:>8} "
              f"{row['inputs_per_s']:>9}")
        for where, count in t.foreign.most_common():
            print(f"    {count:>7} × {where}  e.g. {t.examples[where][:80]}")
    total = sum(t.inputs for t in tallies)
    print(f"{'total':34} {total:>9} {'':>10} {'':>9} {foreign:>8}   ({elapsed:.0f} s, seed {args.seed})")
    print_json(args, {"seed": args.seed, "seconds": round(elapsed, 1), "foreign": foreign,
                      "targets": [t.as_dict() for t in tallies]})
    return 1 if foreign else 0


if __name__ == "__main__":
    sys.exit(main())
