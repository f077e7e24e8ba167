"""A real hub and a real agent for the client's tests, started the way an operator does:
`morag-hub serve`, a join token, `morag-agent enroll`, `morag-agent serve` with the Whisper
test model. The binaries come from `$MORAG_BIN_DIR` (default: the workspace's target/debug;
`scripts/test.sh` builds them), the model and recording from `models/`
(`scripts/setup-test-model.sh`); other recordings are made from it with ffmpeg, and spoken
text with espeak-ng (as scripts/make-test-media.sh does)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("MORAG_BIN_DIR", REPO / "target" / "debug"))
MODEL = REPO / "models" / "ggml-tiny.en.bin"
JFK = REPO / "models" / "jfk.wav"


def need(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}", pytrace=False)
    return path


def free_port() -> int:
    """A port free for both TCP (HTTP, enrollment) and UDP (QUIC)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Hub:
    url: str
    token: str
    data_dir: Path
    agent_id: str
    jfk: Path
    long_recording: Path
    procs: List[subprocess.Popen]
    logs: Path

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.glob("*.log")))


def _wait(what: str, check, seconds: float, hub_logs: Path):
    deadline = time.monotonic() + seconds
    last_error = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the process is still starting
            last_error = e
        time.sleep(0.2)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in hub_logs.glob("*.log"))
    raise AssertionError(f"timed out waiting for {what} ({last_error}); logs:\n{logs}")


def _long_recording(dir: Path, times: int) -> Path:
    """jfk.wav said `times` times in a row (a job that runs long enough to cancel), by ffmpeg."""
    out = dir / f"jfk_x{times}.wav"
    lst = dir / "list.txt"
    lst.write_text(f"file '{JFK}'\n" * times)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
         "-i", str(lst), "-c", "copy", str(out)],
        check=True,
    )
    return out


# About a minute of speech at espeak-ng's 150 words a minute (61 s).
SPOKEN_TEXT = (
    "The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up to "
    "five books at a time. Please return them within three weeks, or ask the staff to renew them online. "
    "Our team met on Monday to plan the next release. We agreed to fix the login problem first, because "
    "many customers reported it last week. After that, we will improve the search page and update the "
    "documentation. The release should be ready by the end of the month, if the tests pass. Remember to "
    "write down every decision in the shared notes, so that nobody has to guess later. Thank you all for "
    "the careful work. The weather this weekend will be mild and dry. On Saturday morning the market "
    "square fills with farmers selling fruit, bread and cheese. In the afternoon there is a concert in "
    "the park, and children can play football on the green field behind the school. On Sunday the museum "
    "is open until five, and entry is free for students."
)


@dataclass
class Spoken:
    path: Path
    text: str
    seconds: float


@pytest.fixture(scope="session")
def spoken(tmp_path_factory) -> Spoken:
    """SPOKEN_TEXT said by espeak-ng, 16 kHz mono WAV: long enough that its transcript comes
    in several live batches while the job runs."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing (Debian package espeak-ng; scripts/install-deps.sh installs it)", pytrace=False)
    d = tmp_path_factory.mktemp("spoken")
    raw, out = d / "raw.wav", d / "spoken.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), SPOKEN_TEXT], check=True, capture_output=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(raw),
         "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", str(out)],
        check=True,
    )
    raw.unlink()
    with wave.open(str(out)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert 45 < seconds < 90, f"the spoken recording is {seconds:.1f} s"
    return Spoken(out, SPOKEN_TEXT, seconds)


@pytest.fixture(scope="session")
def jfk_twice(tmp_path_factory) -> Path:
    """jfk.wav said twice: content no other test submits, so its first job runs (nothing to
    reuse yet). For the reuse test alone."""
    return _long_recording(tmp_path_factory.mktemp("twice"), 2)


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> Iterator[Hub]:
    hub_bin = need(BIN / "morag-hub", "build it with `cargo build -p morag-hub -p morag-agent`")
    agent_bin = need(BIN / "morag-agent", "build it with `cargo build -p morag-hub -p morag-agent`")
    need(MODEL, "run scripts/setup-test-model.sh")
    need(JFK, "run scripts/setup-test-model.sh")
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is missing (Debian package ffmpeg; scripts/test.sh installs it)", pytrace=False)
    root = tmp_path_factory.mktemp("hub")
    data, edge, logs = root / "hub-data", root / "edge", root / "logs"
    logs.mkdir()
    quic, http = free_port(), free_port()
    env = dict(os.environ, RUST_LOG="info")
    procs: List[subprocess.Popen] = []

    def spawn(name: str, args: List[str], **kw) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, **kw)
        procs.append(p)
        return p

    # Jobs may name files in the recordings' directory on the hub's host (`submit_path`).
    spawn("hub", [str(hub_bin), "serve", "--data", str(data), "--quic", f"127.0.0.1:{quic}", "--http", f"127.0.0.1:{http}",
                  "--input-dir", str(JFK.resolve().parent)])
    url = f"http://127.0.0.1:{http}"
    _wait("the hub's /healthz", lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 30, logs)
    token = (data / "api-token").read_text().strip()
    join = subprocess.run([str(hub_bin), "token", "create", "--data", str(data), "--ttl", "10m"],
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    enrolled = subprocess.run([str(agent_bin), "enroll", "--token", join, "--dir", str(edge), "--id", "py-edge"],
                              capture_output=True, text=True)
    assert enrolled.returncode == 0, f"enroll failed: {enrolled.stderr}"
    env["MORAG_REMOTE_HEARTBEAT_INTERVAL_SECONDS"] = "1"
    spawn("agent", [str(agent_bin), "serve", "--dir", str(edge), "--model", str(MODEL)], cwd=str(root))

    def connected():
        r = httpx.get(f"{url}/api/v1/agents", headers={"Authorization": f"Bearer {token}"}, timeout=2)
        return any(a["id"] == "py-edge" and a["connected"] for a in r.json()["agents"])

    _wait("the agent to connect", connected, 60, logs)
    h = Hub(url, token, data, "py-edge", JFK, _long_recording(root, 40), procs, logs)
    yield h
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
