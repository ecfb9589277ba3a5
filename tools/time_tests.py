"""Time every test and write ``tests/durations.json``, the table tests/conftest.py orders the suite by.

    .venv/bin/python tools/time_tests.py            # the whole suite, as `make test` runs it
    .venv/bin/python tools/time_tests.py -k surp    # some tests: only their entries change

pytest-xdist hands tests to its two workers in collection order, a few at a time; starting with the
longest (longest processing time first) keeps both workers busy to the end instead of one idling
while the other finishes a long test. The table is measured, never edited by hand: run this after
adding slow tests. Times are setup + call + teardown, from pytest's JUnit XML report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "tests" / "durations.json"


def node_id(testcase: ET.Element) -> str:
    """pytest's node id from a JUnit ``testcase``: ``tests.test_x.TestC`` + ``test_y[p]``."""
    parts = testcase.get("classname", "").split(".")
    # The module path ends at the first part that names a file (test_*.py); what follows are classes.
    for i in range(len(parts), 0, -1):
        if (ROOT.joinpath(*parts[:i]).with_suffix(".py")).is_file():
            name = testcase.get("name", "").split("@tests/")[0]  # loadgroup appends "@<group>" to grouped ids
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
    raise ValueError(f"no test file for JUnit class {testcase.get('classname')!r}")


def measure(pytest_args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "--no-loadscope-reorder",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ]
        # As `make test`: Python keeps the .pyc of what the suite imports, whatever the environment says.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        done = subprocess.run([*command, *pytest_args], cwd=ROOT, env=env)
        if not report.exists():
            sys.exit(f"pytest wrote no report (exit {done.returncode})")
        cases = ET.parse(report).getroot().iter("testcase")
        return {node_id(case): float(case.get("time", 0.0)) for case in cases}


def main(argv: list[str]) -> None:
    measured = measure(argv)
    table = json.loads(TABLE.read_text()) if TABLE.exists() and argv else {}
    table.update({node: round(seconds, 2) for node, seconds in measured.items()})
    ordered = dict(sorted(table.items(), key=lambda item: (-item[1], item[0])))
    TABLE.write_text(json.dumps(ordered, indent=0) + "\n")
    total = sum(measured.values())
    print(f"{len(measured)} tests, {total:.0f} s of test time; longest first in {TABLE.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
