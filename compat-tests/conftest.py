"""Kafka-compatibility scenario suite: the same scenarios against every broker in
COMPAT_BROKERS ("name=host:port,name=host:port"), with real clients only.

This conftest also acts as the report plugin: after the run it prints a
scenario x broker table and decides the exit status (see pytest_sessionfinish).
"""
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
    cell = _results.setdefault(scenario, OrderedDict((b.name, "-") for b in BROKERS))
    if rep.failed:
        cell[bname] = "FAIL" if rep.when == "call" else "ERROR"
    elif rep.skipped and cell[bname] == "-":
        cell[bname] = "skip"
    elif rep.passed and rep.when == "call" and cell[bname] == "-":
        cell[bname] = "pass"


def _classify(cells):
    ref = cells.get(REFERENCE)
    others = {k: v for k, v in cells.items() if k != REFERENCE}
    bad = lambda v: v in ("FAIL", "ERROR")
    if ref == "pass" and any(bad(v) for v in others.values()):
        return "REGRESSION"  # works on the reference broker, not here
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
    names = [b.name for b in BROKERS]
    w = max(len(s) for s in _results) + 2
    tr.section(f"compat matrix (reference broker: {REFERENCE})")
    tr.write_line("scenario".ljust(w) + "".join(n.ljust(12) for n in names) + "note")
    for scenario, cells in _results.items():
        note = _classify(cells)
        line = scenario.ljust(w) + "".join(cells[n].ljust(12) for n in names) + note
        tr.write_line(line, red=note == "REGRESSION", yellow=note.startswith("fails"))
    regress = [s for s, c in _results.items() if _classify(c) == "REGRESSION"]
    tr.write_line(f"{len(regress)} scenario(s) pass on {REFERENCE} but fail elsewhere"
                  + (": " + ", ".join(regress) if regress else ""))


def pytest_sessionfinish(session, exitstatus):
    # Exit status policy, only when comparing several brokers: non-zero iff some
    # scenario passes on the reference broker and fails on another one; failing
    # everywhere is reported but tolerated. With a single broker (or no reference
    # among them) pytest's own status stands.
    names = [b.name for b in BROKERS]
    if len(names) < 2 or REFERENCE not in names or exitstatus not in (0, 1):
        return
    regress = any(_classify(c) == "REGRESSION" for c in _results.values())
    session.exitstatus = 1 if regress else 0
