"""Starting, killing and restarting a StreamHouse broker process for the StreamHouse-only scenarios."""
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BIN = os.environ.get("STREAMHOUSE_BIN", str(Path(__file__).resolve().parents[2] / "target/release/streamhouse"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    def __init__(self, data_dir, port, extra_args=()):
        self.data_dir, self.port, self.proc, self.extra_args = data_dir, port, None, list(extra_args)
        self.bootstrap = f"127.0.0.1:{port}"

    def start(self):
        log = open(Path(self.data_dir).parent / f"broker-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None, "broker exited during startup"
                time.sleep(0.1)
        raise AssertionError("broker did not start listening")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def broker():
    if not os.path.exists(BIN):
        pytest.fail(f"StreamHouse binary not found at {BIN} (build with cargo build --release)")
    with tempfile.TemporaryDirectory() as tmp:
        b = BrokerProcess(Path(tmp) / "data", free_port())
        b.start()
        yield b
        b.stop()


