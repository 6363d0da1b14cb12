"""Parity table for the README: max absolute differences, fp32, of unveil's Hiera and HieraDet
against timm 1.0.31, the official ``hiera-transformer`` package and each other.

The figures are the ones the parity tests assert (<= 1e-4): this script runs
``tests/test_parity_timm.py`` and ``tests/test_hieradet.py`` and collects the
``PARITY<TAB>model<TAB>comparison<TAB>figure`` lines they print, so the table and the tests can
never disagree.

    python benchmarks/parity.py            # fast tests only
    python benchmarks/parity.py --slow     # also the full 16-frame video model
    python benchmarks/parity.py --markdown # a Markdown table
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/test_parity_timm.py", "tests/test_hieradet.py")


def collect(slow: bool) -> tuple[list[tuple[str, str, str]], str, int]:
    """Run the parity tests; return (rows, pytest summary line, exit code)."""
    marker = "slow or not slow" if slow else "not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", marker, *TEST_FILES]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("PARITY\t"):
            _, model, comparison, figure = line.split("\t")
            rows.append((model, comparison, figure))
    summary = next(
        (ln for ln in reversed(proc.stdout.splitlines()) if " passed" in ln or " failed" in ln), ""
    )
    return rows, summary.strip("= "), proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", action="store_true", help="include tests marked slow")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    rows, summary, code = collect(args.slow)
    header = ("model", "comparison", "max abs diff")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|---|---:|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
    print(f"\npytest: {summary or 'no summary'}" + ("" if code == 0 else f" (exit code {code})"))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
