"""Kafka-compatibility scenario suite: the same scenarios against every broker in
COMPAT_BROKERS ("name=host:port,name=host:port"), with real clients only.

COMPAT_TARGETS ("streamhouse", "kafka" or "kafka,streamhouse"; default: every broker of
COMPAT_BROKERS) keeps only those brokers: the others' parametrizations are not even collected.
No scenario compares two brokers inside one test (each asserts Kafka's documented behaviour against
the one broker it is given), so a StreamHouse-only run tests StreamHouse exactly as a run beside
Kafka does; run.sh then does not start Kafka at all (scripts/test.sh's S3 + PostgreSQL pass).

This conftest also acts as the report plugin: after the run it prints a
scenario x broker table and decides the exit status (see pytest_sessionfinish).
With COMPAT_REFERENCE_RESULTS=<file.json>, a run that includes the reference broker writes its
outcome per scenario there, and a run without it reads them back: the table shows them (marked
as from an earlier run) and the exit policy is the same as if the reference had run alongside.
"""
import json
import os
import socket
import uuid
from collections import OrderedDict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The broker whose behaviour is the reference: a scenario that passes there and
# fails elsewhere is a compatibility regression and fails the run.
REFERENCE = os.environ.get("COMPAT_REFERENCE", "kafka")


class Broker:
    def __init__(self, name, bootstrap):
        self.name = name
        self.bootstrap = bootstrap
        host, _, port = bootstrap.rpartition(":")
        self.host, self.port = host, int(port)

    def __repr__(self):
        return f"{self.name}={self.bootstrap}"


def parse_brokers():
    spec = os.environ.get("COMPAT_BROKERS", "kafka=127.0.0.1:19092")
    brokers = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, addr = part.partition("=")
        if not sep:  # bare address: name it after itself
            name, addr = part, part
        brokers.append(Broker(name.strip(), addr.strip()))
    if not brokers:
        raise pytest.UsageError("COMPAT_BROKERS is empty")
    targets = [t.strip() for t in os.environ.get("COMPAT_TARGETS", "").split(",") if t.strip()]
    if targets:
        unknown = set(targets) - {b.name for b in brokers}
        if unknown:
            raise pytest.UsageError(f"COMPAT_TARGETS names {sorted(unknown)}, not in COMPAT_BROKERS "
                                    f"{spec!r}")
        brokers = [b for b in brokers if b.name in targets]
    return brokers


BROKERS = parse_brokers()


HERE = Path(__file__).resolve().parent


def pytest_generate_tests(metafunc):
    # Every scenario (test_*.py directly in this folder) that takes `broker` runs
    # once per configured broker. Subfolders (e.g. streamhouse/, which brings its
    # own `broker` fixture that starts and kills the process) are left alone.
    if Path(metafunc.module.__file__).resolve().parent != HERE:
        return
    if "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", BROKERS, ids=[b.name for b in BROKERS], indirect=True)


_reachable = {}


@pytest.fixture
def broker(request):
    b = request.param
    # Fail fast (instead of every client timing out) when a broker is down.
    if b.name not in _reachable:
        try:
            socket.create_connection((b.host, b.port), timeout=5).close()
            _reachable[b.name] = None
        except OSError as e:
            _reachable[b.name] = f"broker {b} unreachable: {e}"
    if _reachable[b.name]:
        pytest.fail(_reachable[b.name])
    return b


@pytest.fixture
def topic(request):
    # Unique per test (and per broker run) so scenarios never see each other's data.
    base = request.node.originalname.replace("test_", "", 1)[:40]
    return f"compat-{base}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- report plugin

_results = OrderedDict()  # scenario -> {broker name -> outcome}
_RESULTS_FILE = os.environ.get("COMPAT_REFERENCE_RESULTS")
_TESTED = [b.name for b in BROKERS]


def _load_reference():
    """The reference broker's outcomes from an earlier run, when it is not tested in this one."""
    if REFERENCE in _TESTED or not _RESULTS_FILE:
        return None
    try:
        with open(_RESULTS_FILE) as f:
            return json.load(f)
    except FileNotFoundError:
        raise pytest.UsageError(f"COMPAT_REFERENCE_RESULTS={_RESULTS_FILE}: no such file (write it "
                                f"with a run that includes {REFERENCE})")


_STORED_REF = _load_reference()
# Table columns: the tested brokers, preceded by the stored reference when there is one.
_COLUMNS = ([REFERENCE] if _STORED_REF is not None else []) + _TESTED


def _scenario_of(item):
    cs = getattr(item, "callspec", None)
    if cs is None or "broker" not in cs.params:
        return None, None
    others = [str(v) for k, v in cs.params.items() if k != "broker"]
    name = item.originalname + (f"[{'-'.join(others)}]" if others else "")
    return name, cs.params["broker"].name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    scenario, bname = _scenario_of(item)
    if scenario is None:
        return
    cell = _results.setdefault(scenario, _new_row(scenario))
    if rep.failed:
        cell[bname] = "FAIL" if rep.when == "call" else "ERROR"
    elif rep.skipped and cell[bname] == "-":
        cell[bname] = "skip"
    elif rep.passed and rep.when == "call" and cell[bname] == "-":
        cell[bname] = "pass"


def _new_row(scenario):
    row = OrderedDict((n, "-") for n in _TESTED)
    if _STORED_REF is not None:
        # "?": this scenario has no outcome in the stored file (it was filtered out of that run).
        row = OrderedDict([(REFERENCE, _STORED_REF.get(scenario, "?"))] + list(row.items()))
    return row


def _classify(cells):
    ref = cells.get(REFERENCE)
    others = {k: v for k, v in cells.items() if k != REFERENCE}
    bad = lambda v: v in ("FAIL", "ERROR")
    if ref == "pass" and any(bad(v) for v in others.values()):
        return "REGRESSION"  # works on the reference broker, not here
    if ref == "?" and any(bad(v) for v in others.values()):
        return "NO REFERENCE RESULT"  # cannot tell a regression from a scenario failing everywhere
    if bad(ref) and others and all(bad(v) for v in others.values()):
        return "fails on all"
    if bad(ref) and any(v == "pass" for v in others.values()):
        return "fails on reference only"
    if bad(ref):
        return "fails on reference"
    return ""


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    names = _COLUMNS
    w = max(len(s) for s in _results) + 2
    tr.section(f"compat matrix (reference broker: {REFERENCE})")
    if _STORED_REF is not None:
        tr.write_line(f"({REFERENCE} column: outcomes of an earlier run, from {_RESULTS_FILE})")
    tr.write_line("scenario".ljust(w) + "".join(n.ljust(12) for n in names) + "note")
    for scenario, cells in _results.items():
        note = _classify(cells)
        line = scenario.ljust(w) + "".join(cells[n].ljust(12) for n in names) + note
        tr.write_line(line, red=note in _FAILING, yellow=note.startswith("fails"))
    regress = [s for s, c in _results.items() if _classify(c) in _FAILING]
    tr.write_line(f"{len(regress)} scenario(s) pass on {REFERENCE} but fail elsewhere"
                  + (": " + ", ".join(regress) if regress else ""))


_FAILING = ("REGRESSION", "NO REFERENCE RESULT")


def pytest_sessionfinish(session, exitstatus):
    # Exit status policy, only when comparing several brokers (the reference's column may come
    # from COMPAT_REFERENCE_RESULTS): non-zero iff some scenario passes on the reference broker and
    # fails on another one, or fails where the reference has no stored outcome; failing
    # everywhere is reported but tolerated. With a single broker (or no reference
    # among them) pytest's own status stands.
    if REFERENCE in _TESTED and _RESULTS_FILE and exitstatus in (0, 1):
        stored = {s: c[REFERENCE] for s, c in _results.items()}
        with open(_RESULTS_FILE, "w") as f:
            json.dump(stored, f, indent=0, sort_keys=True)
    names = _COLUMNS
    if len(names) < 2 or REFERENCE not in names or exitstatus not in (0, 1):
        return
    regress = any(_classify(c) in _FAILING for c in _results.values())
    session.exitstatus = 1 if regress else 0
