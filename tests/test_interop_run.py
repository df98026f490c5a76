"""``interop/run``: its pass/fail table from pytest's JUnit XML, and its refusals.

No root needed: these call the script's functions on a JUnit file written here (the
shape pytest writes with ``-o junit_family=xunit1``), not the interop suites.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN = Path(__file__).resolve().parent.parent / "interop" / "run"

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4">
<testcase classname="tests.test_interop_iked" name="test_pyike_initiator[rfc7427]"
  file="tests/test_interop_iked.py" line="1" time="1.25"/>
<testcase classname="tests.test_interop_iked" name="test_iked_rekeys_ike_sa"
  file="tests/test_interop_iked.py" line="2" time="33.9">
  <failure message="AssertionError: no 1x /rekeyed IKE SA/ in 20.0 s; log:&#10;more">tb</failure>
</testcase>
<testcase classname="tests.test_interop_iked" name="test_forced_natt[iked_home]"
  file="tests/test_interop_iked.py" line="3" time="0.01">
  <skipped type="pytest.skip" message="needs root">skip</skipped>
</testcase>
<testcase classname="tests.test_interop_iked" name="test_x" time="0.5">
  <error message="fixture failed">e</error>
</testcase>
</testsuite></testsuites>
"""


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("interop_run", str(RUN))
    spec = importlib.util.spec_from_loader("interop_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["interop_run"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def test_table_from_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _load()
    xml = tmp_path / "junit.xml"
    xml.write_text(JUNIT)
    cases = run.junit_cases("iked-ike", xml)
    assert [(c.name, c.outcome) for c in cases] == [
        ("test_interop_iked.py::test_pyike_initiator[rfc7427]", "PASS"),
        ("test_interop_iked.py::test_iked_rekeys_ike_sa", "FAIL"),
        ("test_interop_iked.py::test_forced_natt[iked_home]", "SKIP"),
        ("test_interop_iked.py::test_x", "ERROR"),
    ]
    assert cases[1].seconds == pytest.approx(33.9)
    assert cases[1].detail == "AssertionError: no 1x /rekeyed IKE SA/ in 20.0 s; log:"
    run.print_table(cases)
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["RESULT", "SUITE", "CASE", "TIME"]
    assert out[2].split()[:4] == [
        "PASS",
        "iked-ike",
        "test_interop_iked.py::test_pyike_initiator[rfc7427]",
        "1.2s",
    ]
    assert out[3].startswith("FAIL") and "rekeyed IKE SA" in out[3]
    assert out[-1].startswith("1 passed, 2 failed, 1 skipped")


def test_unreadable_junit_is_an_error(tmp_path: Path) -> None:
    (case,) = _load().junit_cases("strongswan", tmp_path / "missing.xml")
    assert case.outcome == "ERROR"


def test_bad_arguments_exit_2() -> None:
    for args in ([], ["bogus"]):
        proc = subprocess.run(
            [sys.executable, str(RUN), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2, proc
        assert "iked-ike|iked-vm|strongswan|all" in proc.stderr
