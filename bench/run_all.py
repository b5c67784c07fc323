"""`make bench`: every benchmark behind the README's figures, one after the other.

Each script prints its own table; the exit status is non-zero when one of them failed (a
benchmark also fails when a result it measured was not bit-exact).
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["accuracy.py", "int4_tradeoff.py", "cosim_speed.py", "mac_util.py", "layer_cycles.py",
           "device_throughput.py"]


def main() -> int:
    failed = []
    for script in SCRIPTS:
        print(f"\n=== bench/{script}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
