"""Load test of `emovox serve`: throughput, latency and memory under concurrent clients, with bad input
and attacks too.

Starts the real service (``python -m emovox.cli serve``, uvicorn) on 127.0.0.1, then runs three
phases of ``--duration`` seconds each with ``--clients`` concurrent HTTP clients posting 3 s clips
to ``/api/v1/predict``:

1. all clients send good clips;
2. a ``--bad-fraction`` of the clients send bad uploads instead (empty file, not audio, a file over
   the 20 MB limit), and we check that the good clients are unaffected (no errors, similar latency);
3. all clients send good clips while ``--attackers`` clients of each kind attack the server:
   decoded-size bombs (the issue's 3.4 MB FLAC at 655,350 Hz x 8 channels x 599 s, and a
   192 kHz x 8 channel x 599 s one), WebSocket amplification (the issue's config
   ``{"sample_rate":8000,"window":10,"hop":0.05}``, then the most expensive config the server
   accepts, flooded with the largest frames it accepts), deeply nested JSON frames, and
   connections that open and never finish their request headers.

Reports requests/s, p50/p95/p99 latency and errors of the good clients, what each attacker got,
and the server's RSS at the start, peak (sampled every 0.2 s) and end of each phase, as markdown
tables. Loopback only, bounded in time.

    python benchmarks/serve.py                  # 16 clients, 60 s per phase, the default model
    python benchmarks/serve.py --duration 10 --model runs/x/model --bomb-seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ravdess_happy_actor03.flac"
SR = 16_000


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def add(self, status: str, latency: float, ok: bool) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)
        self.errors += not ok

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread: start, peak and end of a phase."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.start = self.peak = self.end = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, ValueError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = rss_mb(self.pid)
        self.peak = max(self.peak, self.end)


def constant_flac(path: Path, sr: int, channels: int, seconds: float) -> Path:
    """The issue's reproducer: a constant signal, tiny as FLAC, huge once decoded (cached in ``path``)."""
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        with sf.SoundFile(tmp, "w", sr, channels, format="FLAC", subtype="PCM_16") as f:
            block = np.full((sr, channels), 0.25, "f4")
            for _ in range(int(seconds)):
                f.write(block)
        tmp.rename(path)
    return path


def clip_bytes(seconds: float) -> bytes:
    """A ``seconds`` long speech clip as 16-bit WAV: the repo's example recording, looped or cut."""
    if EXAMPLE.is_file():
        wave, sr = sf.read(EXAMPLE, dtype="float32")
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import synth_speech

        wave, sr = np.clip(synth_speech(seconds) * 2.5, -1, 1), SR
    n = int(seconds * sr)
    wave = np.resize(wave, n) if wave.size < n else wave[:n]
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_model(model: str, tmp: Path) -> tuple[str, str]:
    """The bundle to serve and how to describe it; a random-weight bundle when the default is absent."""
    from emovox.bundle import DEFAULT_BUNDLE

    if model != "default" or (DEFAULT_BUNDLE / "config.json").is_file():
        return model, model
    from emovox.bundle import save_bundle
    from emovox.features import FeatureConfig
    from emovox.models import EmotionNet

    net = EmotionNet(FeatureConfig(), "crnn", None, ["neutral", "calm", "happy", "sad", "angry", "fearful"])
    card = {"data": "none (random weights, benchmark only)", "protocol": "none", "licence": "CC0"}
    path = save_bundle(net, tmp / "random-crnn", metrics={}, card=card)
    print(f"note: default model not installed; serving a random-weight crnn bundle ({path})", file=sys.stderr)
    return str(path), "random-weight crnn (default model absent)"


async def client_loop(
    client: httpx.AsyncClient,
    deadline: float,
    stats: Stats,
    payloads: list[tuple[str, bytes]],
    expect_ok: bool,
) -> None:
    i = 0
    while time.monotonic() < deadline:
        name, data = payloads[i % len(payloads)]
        i += 1
        start = time.perf_counter()
        try:
            r = await client.post("/api/v1/predict", files={"file": (name, data, "application/octet-stream")})
            status, ok = (
                str(r.status_code),
                (r.status_code == 200) if expect_ok else (400 <= r.status_code < 500),
            )
        except httpx.TransportError as exc:
            # an oversized upload may see the connection closed by the server's early 413
            status = f"closed ({type(exc).__name__})"
            ok = not expect_ok and name == "oversized.wav"
        stats.add(status, time.perf_counter() - start, ok)


async def phase(
    url: str, clients: int, duration: float, bad_clients: int, good: bytes
) -> tuple[Stats, Stats, float]:
    bad_payloads = [
        ("empty.wav", b""),
        ("notes.txt", b"this is not audio " * 100),
        ("oversized.wav", bytes(21 * 2**20)),
    ]
    good_stats, bad_stats = Stats(), Stats()
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.monotonic() + duration
        started = time.perf_counter()
        tasks = [
            client_loop(client, deadline, bad_stats, bad_payloads, expect_ok=False)
            if i < bad_clients
            else client_loop(client, deadline, good_stats, [("clip.wav", good)], expect_ok=True)
            for i in range(clients)
        ]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return good_stats, bad_stats, elapsed


# --------------------------------------------------------------------------- attackers


@dataclass
class Outcomes:
    """What one kind of attacker got back: counts per outcome, plus free-form totals."""

    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def total(self, name: str, value: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + value

    def describe(self) -> str:
        parts = [f"{k}: {v}" for k, v in sorted(self.counts.items())]
        parts += [f"{k} {v:g}" for k, v in self.totals.items()]
        return ", ".join(parts) or "-"


async def bomb_loop(
    client: httpx.AsyncClient, deadline: float, out: Outcomes, name: str, data: bytes
) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            r = await client.post("/api/v1/predict", files={"file": (name, data, "audio/flac")})
            code = r.json().get("error", "") if r.headers.get("content-type") == "application/json" else ""
            out.add(f"{r.status_code} {code}".strip())
        except httpx.TransportError as exc:
            out.add(f"closed ({type(exc).__name__})")
        answer = round(time.perf_counter() - started, 2)
        out.totals["max answer s"] = max(out.totals.get("max answer s", 0.0), answer)


async def ws_amplify_loop(ws_url: str, deadline: float, out: Outcomes, frame_bytes: int) -> None:
    """The issue's config first (must be refused), then the costliest accepted one, flooded."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    issue = {"sample_rate": 8000, "window": 10, "hop": 0.05}
    accepted = {"sample_rate": 8000, "window": 10, "hop": 0.5}
    frame = (np.random.default_rng(0).uniform(-0.5, 0.5, frame_bytes // 2) * 32767).astype("<i2").tobytes()
    while time.monotonic() < deadline:
        try:
            async with connect(ws_url, max_size=None, open_timeout=30) as ws:
                await ws.send(json.dumps(issue))
                async for _ in ws:
                    pass
            out.add(f"issue config closed {ws.close_code}")
        except ConnectionClosed as exc:
            out.add(f"issue config closed {exc.rcvd.code if exc.rcvd else 1006}")
        except OSError as exc:
            out.add(f"issue config: connect failed ({type(exc).__name__})")
            await asyncio.sleep(0.5)
            continue
        try:
            # close_timeout: the server reads the flood at real-time pace, so a polite close
            # would wait behind megabytes of PCM still in the socket buffers
            async with connect(ws_url, max_size=None, open_timeout=30, close_timeout=1) as ws:
                await ws.send(json.dumps(accepted))
                await ws.recv()  # the config ack

                async def read() -> None:
                    async for message in ws:
                        body = json.loads(message)
                        out.total("windows analysed", 1)
                        out.total("windows dropped", body.get("dropped", 0))

                reader = asyncio.create_task(read())
                try:
                    while time.monotonic() < deadline:
                        await ws.send(frame)
                        out.total("audio sent s", frame_bytes / 2 / 8000)
                finally:
                    reader.cancel()
                out.add("flood ran to the deadline")
        except ConnectionClosed as exc:
            server, client = (exc.rcvd.code if exc.rcvd else None), (exc.sent.code if exc.sent else None)
            reason = exc.rcvd.reason if exc.rcvd else ""
            out.add(f"flood closed (server {server} {reason!r}, client {client})")
        except OSError as exc:
            out.add(f"flood: connect failed ({type(exc).__name__})")
            await asyncio.sleep(0.5)


async def nested_json_loop(ws_url: str, deadline: float, out: Outcomes) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    texts = ["[" * 3000, "[" * 100_000]  # within the text limit but too deep; over the text limit
    i = 0
    while time.monotonic() < deadline:
        text = texts[i % 2]
        i += 1
        try:
            async with connect(ws_url, max_size=None, open_timeout=30) as ws:
                await ws.send(text)
                async for _ in ws:
                    pass
            out.add(f"{len(text) // 1000}k '[': closed {ws.close_code}")
        except ConnectionClosed as exc:
            out.add(f"{len(text) // 1000}k '[': closed {exc.rcvd.code if exc.rcvd else 1006}")
        except OSError as exc:
            out.add(f"connect failed ({type(exc).__name__})")
            await asyncio.sleep(0.5)


async def stall_loop(port: int, deadline: float, out: Outcomes, sockets: int) -> None:
    """Open ``sockets`` connections that send half a request line and then nothing."""

    async def one() -> None:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            out.add(f"connect failed ({type(exc).__name__})")
            return
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            data = await asyncio.wait_for(reader.read(), timeout=max(1.0, deadline - time.monotonic()))
            out.add("closed by the server" if not data else "answered")
            out.totals["max open s"] = max(
                out.totals.get("max open s", 0.0), round(time.monotonic() - started, 1)
            )
        except TimeoutError:
            out.add("still open at the deadline")
        except OSError:
            out.add("reset by the server")
        finally:
            writer.close()

    while time.monotonic() < deadline - 2:
        await asyncio.gather(*(one() for _ in range(sockets)))


async def attack_phase(
    url: str, port: int, clients: int, duration: float, good: bytes, attackers: int, bombs: dict[str, bytes]
) -> tuple[Stats, dict[str, Outcomes], float]:
    good_stats = Stats()
    outcomes = {
        name: Outcomes() for name in [*bombs, "ws amplification", "nested JSON frames", "stalled connections"]
    }
    ws_url = url.replace("http://", "ws://") + "/api/v1/stream"
    limits = httpx.Limits(max_connections=clients * 2 + attackers * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.monotonic() + duration
        started = time.perf_counter()
        good_clients = [
            client_loop(client, deadline, good_stats, [("clip.wav", good)], expect_ok=True)
            for _ in range(clients)
        ]
        tasks = []
        for _ in range(attackers):
            for name, data in bombs.items():
                tasks.append(bomb_loop(client, deadline, outcomes[name], name, data))
            tasks.append(ws_amplify_loop(ws_url, deadline, outcomes["ws amplification"], 256 * 1024))
            tasks.append(nested_json_loop(ws_url, deadline, outcomes["nested JSON frames"]))
        tasks.append(stall_loop(port, deadline, outcomes["stalled connections"], 50 * attackers))
        attack = asyncio.gather(*(asyncio.create_task(t) for t in tasks))
        await asyncio.gather(*good_clients)
        elapsed = time.perf_counter() - started  # the good clients' time, not the attackers' wind-down
        await attack
    return good_stats, outcomes, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help='bundle to serve ("default" or a folder)')
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--bad-fraction", type=float, default=0.25)
    parser.add_argument(
        "--attackers", type=int, default=2, help="attack clients of each kind (0: no attack phase)"
    )
    parser.add_argument(
        "--bomb-seconds",
        type=float,
        default=599.0,
        help="length of the decoded-size bombs (the issue's: 599)",
    )
    args = parser.parse_args()
    if args.clients < 1 or not 0 <= args.bad_fraction < 1 or args.duration <= 0:
        parser.error("need --clients >= 1, 0 <= --bad-fraction < 1, --duration > 0")

    with tempfile.TemporaryDirectory() as tmp:
        model, described = resolve_model(args.model, Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emovox.cli",
                "serve",
                "--model",
                model,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    sys.exit(f"server exited with status {server.returncode}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("server did not start within 120 s")
                time.sleep(0.2)
            good = clip_bytes(args.clip_seconds)
            httpx.post(f"{url}/api/v1/predict", files={"file": ("warm.wav", good)}, timeout=60)  # warm-up
            rows = []
            attack_rows: list[tuple[str, Outcomes]] = []
            bad_n = round(args.clients * args.bad_fraction)
            for name, n_bad in (("all good", 0), (f"{bad_n}/{args.clients} clients send bad files", bad_n)):
                if name != "all good" and n_bad == 0:
                    continue
                with RssSampler(server.pid) as rss:
                    good_stats, bad_stats, elapsed = asyncio.run(
                        phase(url, args.clients, args.duration, n_bad, good)
                    )
                rows.append((name, "good", good_stats, elapsed, rss))
                if n_bad:
                    rows.append((name, "bad", bad_stats, elapsed, rss))
            if args.attackers:
                print("writing the decoded-size bombs (cached per run)...", file=sys.stderr)
                bombs = {
                    "bomb 655350 Hz x 8 ch": constant_flac(
                        Path(tmp) / "bomb.flac", 655_350, 8, args.bomb_seconds
                    ),
                    "bomb 192 kHz x 8 ch": constant_flac(
                        Path(tmp) / "hires.flac", 192_000, 8, args.bomb_seconds
                    ),
                }
                bomb_bytes = {
                    f"{k} x {args.bomb_seconds:g} s ({v.stat().st_size / 2**20:.1f} MB)": v.read_bytes()
                    for k, v in bombs.items()
                }
                name = f"{args.clients} good clients + {args.attackers} attackers of each kind"
                with RssSampler(server.pid) as rss:
                    good_stats, outcomes, elapsed = asyncio.run(
                        attack_phase(url, port, args.clients, args.duration, good, args.attackers, bomb_bytes)
                    )
                rows.append((name, "good", good_stats, elapsed, rss))
                attack_rows = list(outcomes.items())
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(
        f"\nemovox serve, model: {described}; {args.clients} clients, {args.duration:g} s per phase, "
        f"{args.clip_seconds:g} s clips; {os.cpu_count()} CPU cores\n"
    )
    print(
        "| phase | requests | n | req/s | p50 ms | p95 ms | p99 ms | errors | statuses | "
        "RSS start / peak / end MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name, kind, stats, elapsed, rss in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(stats.statuses.items()))
        print(
            f"| {name} | {kind} | {len(stats.latencies)} | {len(stats.latencies) / elapsed:.1f} | "
            f"{stats.pct(50):.0f} | {stats.pct(95):.0f} | {stats.pct(99):.0f} | {stats.errors} | "
            f"{statuses} | {rss.start:.0f} / {rss.peak:.0f} / {rss.end:.0f} |"
        )
    if attack_rows:
        print("\n| attacker | what it got |")
        print("|---|---|")
        for kind, outcome in attack_rows:
            print(f"| {kind} | {outcome.describe()} |")


if __name__ == "__main__":
    main()
