"""Load test of `emovox serve`: throughput, latency and memory under concurrent clients, with bad input too.

Starts the real service (``python -m emovox.cli serve``, uvicorn) on 127.0.0.1, then runs two
phases of ``--duration`` seconds each with ``--clients`` concurrent HTTP clients posting 3 s clips
to ``/api/v1/predict``:

1. all clients send good clips;
2. a ``--bad-fraction`` of the clients send bad uploads instead (empty file, not audio, a file over
   the 20 MB limit), and we check that the good clients are unaffected (no errors, similar latency).

Reports requests/s, p50/p95/p99 latency, errors and the server's RSS at start and end as a
markdown table. Loopback only, bounded in time.

    python benchmarks/serve.py                  # 16 clients, 60 s per phase, the default model
    python benchmarks/serve.py --duration 10 --model runs/x/model
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help='bundle to serve ("default" or a folder)')
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--bad-fraction", type=float, default=0.25)
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
            bad_n = round(args.clients * args.bad_fraction)
            for name, n_bad in (("all good", 0), (f"{bad_n}/{args.clients} clients send bad files", bad_n)):
                if name != "all good" and n_bad == 0:
                    continue
                rss0 = rss_mb(server.pid)
                good_stats, bad_stats, elapsed = asyncio.run(
                    phase(url, args.clients, args.duration, n_bad, good)
                )
                rss1 = rss_mb(server.pid)
                rows.append((name, "good", good_stats, elapsed, rss0, rss1))
                if n_bad:
                    rows.append((name, "bad", bad_stats, elapsed, rss0, rss1))
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(
        f"\nemovox serve, model: {described}; {args.clients} clients, {args.duration:g} s per phase, "
        f"{args.clip_seconds:g} s clips; {os.cpu_count()} CPU cores\n"
    )
    print(
        "| phase | requests | n | req/s | p50 ms | p95 ms | p99 ms | errors | statuses | RSS start→end MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name, kind, stats, elapsed, rss0, rss1 in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(stats.statuses.items()))
        print(
            f"| {name} | {kind} | {len(stats.latencies)} | {len(stats.latencies) / elapsed:.1f} | "
            f"{stats.pct(50):.0f} | {stats.pct(95):.0f} | {stats.pct(99):.0f} | {stats.errors} | "
            f"{statuses} | {rss0:.0f} → {rss1:.0f} |"
        )


if __name__ == "__main__":
    main()
