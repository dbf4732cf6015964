"""The long run of the router's byte-level fuzzing: the properties of
tests/router/fuzz_wire.py (the upstream pool's response parsing, the SSE relay and its
scan), the same the suite checks in a bounded number of examples, run for ``--minutes``.

    PYTHONPATH=$PWD .venv/bin/python scripts/fuzz_upstream.py --minutes 10 [--json out.json]

It cycles through the properties in rounds of ``--batch`` examples each, with a fresh
random seed per round, until the time is up; the first failure stops it, printing
hypothesis' shrunk example, and the exit status is 1. The summary (examples per property,
seconds, failures) is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.router import fuzz_wire  # noqa: E402

PROPERTIES = {
    "upstream_well_formed": fuzz_wire.check_well_formed,
    "upstream_hostile": fuzz_wire.check_hostile,
    "relay_scan": fuzz_wire.check_tally,
    "relay": fuzz_wire.check_relay,
}


def run_round(name: str, batch: int, counts: dict[str, int]) -> None:
    prop = PROPERTIES[name]

    def counted(data) -> None:
        counts[name] += 1
        prop(data)

    test = settings(max_examples=batch, deadline=None, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))(given(st.data())(counted))
    test()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=2000, help="examples per property per round")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    counts = {name: 0 for name in PROPERTIES}
    seconds = {name: 0.0 for name in PROPERTIES}
    failure = None
    start = time.monotonic()
    deadline = start + args.minutes * 60
    rounds = 0
    while time.monotonic() < deadline and failure is None:
        rounds += 1
        for name in PROPERTIES:
            t0 = time.monotonic()
            try:
                run_round(name, args.batch, counts)
            except Exception as exc:  # a property failed: hypothesis has shrunk and printed it
                failure = {"property": name, "error": "".join(traceback.format_exception_only(exc)).strip()}
                traceback.print_exc()
            seconds[name] += time.monotonic() - t0
            if failure is not None or time.monotonic() >= deadline:
                break
    summary = {"minutes": round((time.monotonic() - start) / 60, 2), "rounds": rounds,
               "examples": counts, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "examples_per_s": {k: round(counts[k] / seconds[k], 1) if seconds[k] else 0 for k in counts},
               "failure": failure}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
