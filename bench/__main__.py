"""Run every benchmark in turn: ``python -m bench [--quick] [--keep]``.

Each runs in its own process, so one that fails does not stop the others;
the exit status is non-zero if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time

SCRIPTS = ("lateness", "throughput", "api", "failover", "footprint", "sidebyside")


def main() -> int:
    flags = [arg for arg in sys.argv[1:] if arg in ("--quick", "--keep")]
    failed = []
    for script in SCRIPTS:
        began = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{script}", *flags])
        took = time.monotonic() - began
        print(f"\n({script}: exit {code} in {took:.0f} s)\n", flush=True)
        if code:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
