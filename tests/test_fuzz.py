"""Fuzzing in the test suite: every target's seeds and regressions replayed, then a short
coverage-guided run of every target with atheris (tools/fuzz).

PYIKE_FUZZ_SECONDS sets the coverage-guided time per target (default 6 s; CI's whole set
takes about two minutes with two targets at a time). A longer run's figures are in
docs/security.md.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz_targets import SEEDS, TARGETS

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("PYIKE_FUZZ_SECONDS", "6"))


def _inputs(target: str) -> list[Path]:
    files: list[Path] = []
    for d in (SEEDS / target, SEEDS / "regressions" / target):
        if d.is_dir():
            files += sorted(d.iterdir())
    return files


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_and_regressions_replay(target: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every committed input goes through its target without an exception escaping."""
    inputs = _inputs(target)
    assert inputs, f"no seeds for {target}: run tools/fuzz seeds"
    one_input = TARGETS[target]()
    with caplog.at_level(logging.CRITICAL):
        for path in inputs:
            one_input(path.read_bytes())


def test_every_target_has_a_seed_corpus_that_reaches_the_code() -> None:
    """The seeds are real messages: most IKE seeds decode (else the corpus is stale)."""
    from pyike import wire

    seeds = _inputs("ike-decode")
    decoded = 0
    for path in seeds:
        try:
            wire.parse_message(path.read_bytes())
            decoded += 1
        except wire.WireError:
            pass
    assert decoded >= len(seeds) * 0.9


def _fuzz(target: str) -> tuple[str, int, str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fuzz"), "run", target, "--seconds", str(SECONDS)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 180,
        cwd=ROOT,
    )
    return target, proc.returncode, proc.stdout + proc.stderr


def test_coverage_guided_run_of_every_target() -> None:
    """A short atheris run per target finds no crash, and executes and covers something."""
    import atheris  # noqa: F401  (a test dependency: its absence is a failure, not a skip)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_fuzz, sorted(TARGETS)))
    failures = []
    for target, rc, out in results:
        last = out.strip().splitlines()[-1].split() if out.strip() else []
        # The table row: target seconds execs execs/s cov crashes
        ok = rc == 0 and len(last) == 6 and last[0] == target
        # It ran (a slow target such as config manages only some hundreds on a busy
        # machine) and reached pyike's code; a crash makes rc non-zero.
        if not ok or int(last[2]) < 10 or int(last[4]) == 0:
            failures.append(f"{target}: rc={rc}\n{out[-2000:]}")
    assert not failures, "\n\n".join(failures)
