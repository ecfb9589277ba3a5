"""Does the network model predict a deployment's round time on a real, kernel-rate-limited link?

``[network]`` (fedcomp/network.py) says how long a round would take on given links: for each client its
train message down, its compute, its reply up, ``t_i = 8·D_i/B↓ + C_i + 8·U_i/B↑`` (plus latency), and the
round lasts as long as its slowest client. This benchmark runs a real deployment (a SuperLink and two
SuperNodes, Flower's own processes, as in tests/test_deployment.py) over links that the Linux kernel
rate-limits, and compares each round's measured wall time with the model's prediction for the same link.

**The link.** Three network namespaces of this run's own (unique names, deleted at the end, also on
SIGTERM/SIGHUP/Ctrl-C): one for the SuperLink (and the ServerApp it starts), one per SuperNode (and its
ClientApps). Each SuperNode's namespace is joined to the SuperLink's by a veth pair, a point-to-point
cable of its own, 10.99.i.0/30; nothing else is routed, so no traffic leaves them and the host's
interfaces are never touched. Each end of a pair has its own egress qdisc, ``htb`` with one class at the
link rate (rate = ceil: the whole rate, never more), and under it a 250 ms drop-tail ``bfifo`` (of the
order of a home router's or a cellular link's buffer): the SuperLink's end shapes what goes *down* to
that client, the SuperNode's end what goes *up*. Each direction of each client's link is thus shaped on
its own, by its own queue, as on a real access link; the loopback of each namespace, where the SuperLink
talks to its ServerApp and each SuperNode to its ClientApps, is not shaped. Segmentation offload is off
on the veths (``gso_max_segs 1``), so the qdisc sees 1,514-byte Ethernet frames, not 64 KB super-packets:
the rate is then the rate of Ethernet frames (IP, TCP headers and the 14-byte MAC header count, as they do
on a real link), which costs bulk TCP 66 bytes in 1,514 (4.4 %): the runs' model counts them with
``network.framing`` = 1514/1448 (``--framing 1`` leaves them out). The kernel here has no ``netem``, so the links have no added latency (the model's latency is 0):
this checks the bandwidth term, not the latency term or TCP's slow start over a long round trip. A raw TCP
transfer over the same link (2 s of data each way) is timed first, to show what the shaping itself gives.

**The run.** LeNet-5-Caffe (431,080 parameters, a 1.72 MB dense model) on the embedded digits, two
clients, 5 local steps (so that the clients' compute is small beside the transfer), the server's
evaluation only after the last round, a dense downlink, and a dense or a SuRP 1 % uplink, at each link
speed (default 1 and 8 Mbit/s both ways: the dense model takes 13.8 s and 1.7 s each way). One deployment
serves every run; the link rate is changed between runs.

**The measure.** *Predicted*: the run's own ``sim_round_s``: the run carries ``[network] link = "fixed"``
at the shaped rate, so the ServerApp's SimulatedClock (fedcomp.network.NetworkModel) computes each round
from the wire bytes it measured for each train message and reply, and each client's measured compute, the
seconds the client reported decoding, training and encoding (``decode_s + train_s + encode_s``). *Measured*:
the row's ``wall_s`` (from the round's configure to its row, aggregation and evaluation included). Beside
them, from the SuperNodes' own log lines (each stamped here as it arrives): how long each message took to
come down (``Receiving`` to ``Received successfully``) and its reply to go up (``Sending`` to ``Sent
successfully``), against the model's 8·D/B and 8·U/B; and what lies between (the ClientApp's process start
and the SuperNode's polling) and around (the server's polling). Bytes: fedcomp's wire totals (rows and
warm-up) beside the SuperLink's own traffic record (``flwr ls --run-id N --format json``: Flower counts
the protobuf requests and responses of PullMessages / PushMessages and the objects' bytes of PullObject /
PushObject) and beside what the kernel counted on the shaped links (``tc -s class``: every frame).

**The runtime's overhead.** A Flower 1.42 deployment spends seconds a round that are neither transfer
nor compute: a SuperNode polls for messages every 3 s and starts a ClientApp process for each one, and
the ServerApp polls for replies (fedcomp's every 0.2 s; Flower's deployment grid alone, every 3 s). The model's ``network.overhead_s`` (``R``, added to every client's
time) stands for them. It is measured here first, unless ``--overhead-s`` gives it: a dense run on an
unshaped (1 Gbit/s) link, where the model's transfers are milliseconds, and ``R`` = its mean measured
round less its mean predicted round. The shaped runs carry that ``R`` in their config; the tables show
the prediction with it and without it (transfers and compute only).

**Goal** (issue 40): each configuration's measured round time within 15 % of the predicted. Measured
figures and their reading: docs/benchmarks.md, "Emulated link".

Printed: three tables (round time; transfers; bytes), then a JSON object as the last line. Needs root,
``ip`` and ``tc`` (iproute2) and the kernel's htb and veth; without them it prints why and a JSON line
``{"skipped": ...}``, and exits 0.

    sudo .venv/bin/python benchmarks/emulated_link.py [--quick] [--rounds N] [--mbps 1 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.network import Link, NetworkModel  # no torch: the skip path stays fast

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

GOAL = 0.15
"""Measured round time within this fraction of the predicted."""
CALIBRATION_MBPS = 1000.0
"""The unshaped link of the calibration run (htb at 1 Gbit/s: the dense model takes 14 ms each way)."""
FRAMING = 1514 / 1448
"""The model's ``network.framing`` here: htb counts Ethernet frames, and a 1,514-byte frame carries 1,448 bytes
of TCP payload (1,500-byte MTU less 20 IP and 32 TCP header bytes with timestamps; 14 bytes of MAC header)."""
NODES = 2
PORT = 9093
"""The SuperLink's HTTP port (Fleet, Control and runtime APIs: Flower 1.42 serves them on one port)."""
PROBE_PORT = 9200
QUEUE_S = 0.25
"""The drop-tail buffer at each end of a link, in seconds of its rate."""
FRAME = 1514
"""An Ethernet frame at MTU 1500, header included: what the qdisc counts per full TCP segment."""
CONNECTION = "emulated"
UPLINKS = {"dense": {"name": "identity"}, "SuRP 1%": {"name": "surp", "density": 0.01}}
STARTED = re.compile(r"Successfully started run (\d+)")


# ----------------------------------------------------------------------------- what can be checked without root


def unavailable(path: str | None = None) -> str | None:
    """Why this machine cannot run the benchmark (None: it can, as far as can be told before trying)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces and tc are Linux's; this is {sys.platform}"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool, path=path) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH (iproute2)"
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces and shapes their links with tc"
    return None


def slowest_client(row: dict[str, Any], model: NetworkModel) -> dict[str, float]:
    """The run's own prediction of a round (``sim_round_s``) and its parts for the slowest client.

    ``sim_client_s`` is each client's ``down + compute + overhead + up`` as fedcomp's network model computed
    it in the run; its transfer parts are recomputed here by ``model`` (the run's ``[network]``) from the
    row's wire bytes (its train message: the largest sent that round; its reply: its own), and its compute
    is what is left."""
    times = {int(p): float(t) for p, t in row["sim_client_s"].items()}
    client = max(times, key=lambda p: times[p])
    down_bytes = max(row["downlink_wire_bytes_sent_per_client"])
    t = model.client_time(client, down_bytes, row["uplink_wire_bytes_per_client"][row["clients"].index(client)], 0.0)
    return {
        "client": client,
        "predicted_s": float(row["sim_round_s"]),
        "down_s": t.down_s,
        "compute_s": times[client] - t.down_s - t.up_s - t.overhead_s,
        "up_s": t.up_s,
    }


ROUND_LINE = re.compile(r"\[RUN (\d+)(?:, ROUND [^\]]*)?\]")
RECEIVING = re.compile(r"Receiving: (\S+) message")
SENDING = re.compile(r"Sending: (\S+) message")


def node_events(lines: list[tuple[float, str]], run_id: int) -> dict[str, list[dict[str, float]]]:
    """Message type → a SuperNode's messages of run ``run_id`` in the order it received them, each with the
    times of its log lines: ``recv_start`` (it pulled the message), ``recv_end`` (the content had come),
    ``send_start`` and ``send_end`` (the reply's). Flower 1.42's SuperNode handles one message at a time, so
    a reply belongs to the oldest message of its type not answered yet."""
    events: dict[str, list[dict[str, float]]] = {}
    run, receiving, sending = None, None, None
    for t, line in lines:
        if m := ROUND_LINE.search(line):
            run = int(m.group(1))
        elif run != run_id:
            continue
        elif m := RECEIVING.search(line):
            receiving = {"recv_start": t}
            events.setdefault(m.group(1), []).append(receiving)
        elif "Received successfully" in line and receiving is not None:
            receiving["recv_end"], receiving = t, None
        elif m := SENDING.search(line):
            waiting = [e for e in events.get(m.group(1), []) if "send_start" not in e]
            sending = waiting[0] if waiting else None
            if sending is not None:
                sending["send_start"] = t
        elif "Sent successfully" in line and sending is not None:
            sending["send_end"], sending = t, None
    return events


SENT_BYTES = re.compile(r"class htb (\S+) .*?Sent (\d+) bytes", re.S)


def class_bytes(tc_output: str) -> dict[str, int]:
    """htb class id → the bytes it has sent, from ``tc -s class show``."""
    blocks = re.split(r"\n(?=class )", tc_output.strip())
    return {m.group(1): int(m.group(2)) for b in blocks if (m := SENT_BYTES.search(b))}


# ----------------------------------------------------------------------------- the emulated network


def _sh(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise SetupError(f"`{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


class SetupError(RuntimeError):
    """The emulated network could not be made (no namespaces, no veth or htb in this kernel, ...)."""


class Testbed:
    """The SuperLink's namespace and one per SuperNode, each pair joined by a shaped veth (module docstring)."""

    def __init__(self, nodes: int = NODES) -> None:
        tag = f"fcel{os.getpid()}{secrets.token_hex(2)}"  # unique: never a namespace this run did not make
        self.server = f"{tag}-s"
        self.nodes = [f"{tag}-c{i}" for i in range(nodes)]
        self.made: list[str] = []

    @staticmethod
    def server_ip(i: int) -> str:
        return f"10.99.{i}.1"

    def ends(self) -> list[tuple[str, str, str, str]]:
        """(namespace, device, address, direction) of every shaped end."""
        out = []
        for i, ns in enumerate(self.nodes):
            out.append((self.server, f"l{i}", f"{self.server_ip(i)}/30", f"down{i}"))
            out.append((ns, f"v{i}", f"10.99.{i}.2/30", f"up{i}"))
        return out

    def setup(self, mbps: float) -> None:
        for ns in [self.server, *self.nodes]:
            _sh(["ip", "netns", "add", ns])
            self.made.append(ns)
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        for i, ns in enumerate(self.nodes):
            _sh(["ip", "-n", self.server, "link", "add", f"l{i}", "type", "veth", "peer", "name", f"v{i}", "netns", ns])
        for ns, dev, addr, _ in self.ends():
            _sh(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"])
            _sh(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _sh(["ip", "-n", ns, "link", "set", "dev", dev, "up"])
            _sh(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"])
            _sh(["tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", *self._rate(mbps)])
            _sh(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", *self._queue(mbps)])

    @staticmethod
    def _rate(mbps: float) -> list[str]:
        return ["htb", "rate", f"{mbps}mbit", "ceil", f"{mbps}mbit"]

    @staticmethod
    def _queue(mbps: float) -> list[str]:
        return ["bfifo", "limit", str(max(int(mbps * 1e6 / 8 * QUEUE_S), 16 * FRAME))]

    def set_rate(self, mbps: float) -> None:
        for ns, dev, _, _ in self.ends():
            _sh(["tc", "-n", ns, "class", "change", "dev", dev, "parent", "1:", "classid", "1:10", *self._rate(mbps)])
            _sh(["tc", "-n", ns, "qdisc", "change", "dev", dev, "parent", "1:10", "handle", "10:", *self._queue(mbps)])

    def shaped_bytes(self) -> dict[str, int]:
        """Direction (``down0``, ``up0``, ...) → bytes the kernel has sent through that end's htb class."""
        return {
            d: class_bytes(_sh(["tc", "-s", "-n", ns, "class", "show", "dev", dev])).get("1:10", 0)
            for ns, dev, _, d in self.ends()
        }

    @staticmethod
    def exec(ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        """Kill what still runs in this testbed's namespaces (by PID: only what this run started lives there)
        and delete them; the veths go with them."""
        for ns in reversed(self.made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            for _ in range(50):
                if subprocess.run(["ip", "netns", "del", ns], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
        self.made.clear()


# ----------------------------------------------------------------------------- processes


@dataclass
class Proc:
    popen: subprocess.Popen
    lines: list[tuple[float, str]] = field(default_factory=list)
    """Every output line with the time.monotonic() it arrived at (captured processes only)."""


class Processes:
    """Processes started here, each in its own process group, stopped by PID at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []

    def start(self, argv: list[str], log_name: str, capture: bool = False) -> Proc:
        log = (self.logs / log_name).open("wb")
        out = subprocess.PIPE if capture else log
        popen = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True
        )
        proc = Proc(popen)
        if capture:
            threading.Thread(target=self._read, args=(proc, log), daemon=True).start()
        else:
            log.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def _read(proc: Proc, log: Any) -> None:
        with log:
            for raw in iter(proc.popen.stdout.readline, b""):
                proc.lines.append((time.monotonic(), raw.decode(errors="replace")))
                log.write(raw)
                log.flush()

    def stop(self) -> None:
        for proc in self.procs:
            p = proc.popen
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait()


class RowClock:
    """When each line of a run's rounds.jsonl appeared (time.monotonic(), polled every 20 ms): a round's end
    on the same clock as the SuperNodes' log lines; its start is that less the row's ``wall_s``."""

    def __init__(self, path: Path) -> None:
        self.path, self.times, self._stop = path, [], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                n = self.path.read_bytes().count(b"\n")
            except OSError:
                continue
            now = time.monotonic()
            self.times.extend([now] * (n - len(self.times)))

    def __enter__(self) -> RowClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_until(check, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {limit_s:.0f} s")
        time.sleep(0.3)


PROBE_SERVER = """
import socket, sys
n = int(sys.argv[2])
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
served = 0
while served < 2:
    c, _ = srv.accept()
    kind = c.recv(1)
    if kind == b"D":
        c.sendall(bytes(n)); c.shutdown(socket.SHUT_WR); c.recv(1)
    elif kind == b"U":
        got = 0
        while got < n:
            got += len(c.recv(1 << 16))
        c.sendall(b"k")
    served += kind in (b"D", b"U")
    c.close()
"""
PROBE_CLIENT = """
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(100):
    try:
        socket.create_connection((host, port), timeout=1).close(); break
    except OSError:
        time.sleep(0.05)
s = socket.create_connection((host, port)); t0 = time.perf_counter(); s.sendall(b"D"); got = 0
while got < n:
    got += len(s.recv(1 << 16))
down = time.perf_counter() - t0; s.close()
s = socket.create_connection((host, port)); t0 = time.perf_counter(); s.sendall(b"U" + bytes(n)); s.recv(1)
up = time.perf_counter() - t0; s.close()
print(json.dumps({"down_s": down, "up_s": up}))
"""


def probe(bed: Testbed, env: dict[str, str], mbps: float) -> dict[str, float]:
    """A raw TCP transfer of 2 s of the link's rate each way over client 0's link: seconds against 8·n/B."""
    n = int(mbps * 1e6 / 8 * 2)
    py = sys.executable
    server = subprocess.Popen(bed.exec(bed.server, [py, "-c", PROBE_SERVER, str(PROBE_PORT + 1), str(n)]), env=env)
    try:
        done = subprocess.run(
            bed.exec(bed.nodes[0], [py, "-c", PROBE_CLIENT, bed.server_ip(0), str(PROBE_PORT + 1), str(n)]),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.kill()
        server.wait()
    got = json.loads(done.stdout)
    ideal = Link(mbps, mbps).down_s(n)
    return {"bytes": n, "model_s": ideal, **got, "down_ratio": got["down_s"] / ideal, "up_ratio": got["up_s"] / ideal}


# ----------------------------------------------------------------------------- the deployment and its runs


def experiment(
    uplink: dict[str, Any], mbps: float, rounds: int, out: Path, overhead_s: float = 0.0, framing: float = FRAMING
) -> str:
    """The experiment TOML of one run (module docstring: "The run")."""
    up = "\n".join(f"{k} = {json.dumps(v)}" for k, v in uplink.items())
    return f"""name = "emulated-{uplink["name"]}"
seed = 0
output_dir = {json.dumps(str(out))}

[data]
dataset = "mnist5k"
partition = "iid"

[model]
name = "lenet5_caffe"

[federation]
num_clients = {NODES}
rounds = {rounds}
min_train_clients = {NODES}
evaluate_every = 0
checkpoint_every = 0
round_timeout_s = 1200.0

[client]
local_steps = 5
batch_size = 32
lr = 0.05

[uplink]
{up}

[network]
link = "fixed"
uplink_mbps = {mbps}
downlink_mbps = {mbps}
overhead_s = {overhead_s}
framing = {framing}

[simulation]
num_cpus = 1.0
device = "cpu"
"""


class Deployment:
    """A SuperLink in the testbed's server namespace and a SuperNode in each node namespace."""

    def __init__(self, bed: Testbed, work: Path) -> None:
        self.bed, self.work = bed, work
        home = work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{PORT}"\ninsecure = true\n'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # fedcomp is installed; no internet
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("FEDCOMP_ALLOW_IMPORTS", None)
        self.procs = Processes(self.env, work)
        self.nodes: list[Proc] = []

    def _listening(self, link: Proc) -> bool:
        if link.popen.poll() is not None:
            tail = (self.work / "superlink.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the SuperLink exited with {link.popen.returncode}:\n{tail}")
        check = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1).close()"
        cmd = self.bed.exec(self.bed.server, [sys.executable, "-c", check])
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0

    def start(self) -> None:
        superlink = [str(BIN / "flower-superlink"), "--insecure", "--host", "0.0.0.0", "--port", str(PORT)]
        link = self.procs.start(self.bed.exec(self.bed.server, superlink), "superlink.log")
        wait_until(lambda: self._listening(link), 120, "the SuperLink listening")
        for i, ns in enumerate(self.bed.nodes):
            node = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"{self.bed.server_ip(i)}:{PORT}",
                    "--port", "9094", "--node-config", f"partition-id={i} num-partitions={NODES}"]  # fmt: skip
            self.nodes.append(self.procs.start(self.bed.exec(ns, node), f"supernode{i}.log", capture=True))
        wait_until(
            lambda: all(any("SuperNode ID" in line for _, line in n.lines) for n in self.nodes),
            120,
            "the SuperNodes registered",
        )

    def stop(self) -> None:
        self.procs.stop()

    def traffic(self, run_id: int) -> dict[str, float]:
        """The SuperLink's own record of the run (``flwr ls --run-id N --format json``)."""
        cmd = [str(BIN / "flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]
        for _ in range(30):  # the run is marked finished shortly after its log stream ends
            done = subprocess.run(self.bed.exec(self.bed.server, cmd), env=self.env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
            run = json.loads(done.stdout[done.stdout.find("{") :])["runs"][0]
            if str(run["status"]).startswith("finished"):
                break
            time.sleep(1.0)
        return {
            "status": run["status"],
            "inbound_bytes": int(run["network-traffic"]["inbound-bytes"]),
            "outbound_bytes": int(run["network-traffic"]["outbound-bytes"]),
            "clientapp_s": float(run["compute-time"]["clientapp-seconds"]),
        }

    def run(
        self, label: str, uplink: dict[str, Any], mbps: float, rounds: int, overhead_s: float = 0.0,
        framing: float = FRAMING,
    ) -> dict:  # fmt: skip
        slug = f"{uplink['name']}-{mbps:g}mbit"
        config, run_dir = self.work / f"{slug}.toml", self.work / f"run-{slug}"
        config.write_text(experiment(uplink, mbps, rounds, self.work, overhead_s, framing))
        self.bed.set_rate(mbps)
        marks = [len(n.lines) for n in self.nodes]
        before = self.bed.shaped_bytes()
        submit = [str(BIN / "fedcomp"), "submit", ".", CONNECTION, "--config", str(config), "--run-dir", str(run_dir)]
        t0 = time.monotonic()
        with RowClock(run_dir / "rounds.jsonl") as row_clock:
            done = subprocess.run(self.bed.exec(self.bed.server, submit), env=self.env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=3600)  # fmt: skip
        elapsed = time.monotonic() - t0
        output = done.stdout + done.stderr
        (self.work / f"{slug}.submit.log").write_text(output)
        started = STARTED.search(output)
        if done.returncode != 0 or started is None:
            raise RuntimeError(
                f"{label} at {mbps:g} Mbit/s: `fedcomp submit` exited {done.returncode}:\n{output[-3000:]}"
            )
        run_id = int(started.group(1))
        shaped = {k: v - before.get(k, 0) for k, v in self.bed.shaped_bytes().items()}
        traffic = self.traffic(run_id)
        rows = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines() if x.strip()]
        summary = json.loads((run_dir / "summary.json").read_text())
        events = [node_events(n.lines[m:], run_id) for n, m in zip(self.nodes, marks, strict=True)]
        ends = row_clock.times if len(row_clock.times) == len(rows) else [None] * len(rows)
        return analyse(
            label, uplink, mbps, rows, ends, summary, events, traffic, shaped, elapsed, overhead_s, framing
        )  # fmt: skip


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def analyse(
    label: str,
    uplink: dict[str, Any],
    mbps: float,
    rows: list[dict[str, Any]],
    ends: list[float | None],
    summary: dict[str, Any],
    events: list[dict[str, list[dict[str, float]]]],
    traffic: dict[str, Any],
    shaped: dict[str, int],
    elapsed: float,
    overhead_s: float = 0.0,
    framing: float = 1.0,
) -> dict[str, Any]:
    """One run's figures: each round predicted against measured, the transfers as the SuperNodes logged them
    against the model's, where the rest of the round went, and the bytes three ways.

    Round ``k``'s message to a node is the node's ``k``-th train message of the run (every node is sampled
    every round here). ``pickup_s``: from the round's start (its row's arrival less its ``wall_s``) to the
    node pulling its message; ``after_s``: from the last reply sent to the row's arrival."""
    model = NetworkModel.fixed(mbps, mbps, overhead_s=overhead_s, framing=framing)  # the runs' own [network]
    keys = ("recv_start", "recv_end", "send_start", "send_end")
    rounds = []
    for k, (row, end) in enumerate(zip(rows, ends, strict=True)):
        parts = slowest_client(row, model)
        start = None if end is None else end - row["wall_s"]
        nodes = []
        for i, ev in enumerate(events):
            trains = ev.get("train", [])
            e = trains[k] if k < len(trains) else {}
            if not set(keys) <= e.keys() or i not in row["clients"]:
                continue
            down_bytes = _mean(row["downlink_wire_bytes_sent_per_client"])
            t = model.client_time(i, down_bytes, row["uplink_wire_bytes_per_client"][row["clients"].index(i)], 0.0)
            nodes.append({
                "client": i,
                "pickup_s": None if start is None else e["recv_start"] - start,
                "down_model_s": t.down_s,
                "down_s": e["recv_end"] - e["recv_start"],
                "node_s": e["send_start"] - e["recv_end"],
                "up_model_s": t.up_s,
                "up_s": e["send_end"] - e["send_start"],
                "sent_at": e["send_end"],
            })  # fmt: skip
        last = max((n["sent_at"] for n in nodes), default=None)
        rounds.append({
            "round": row["round"],
            "predicted_s": round(parts["predicted_s"], 3),
            "measured_s": round(row["wall_s"], 3),
            "ratio": round(row["wall_s"] / parts["predicted_s"], 3),
            "ratio_without_overhead": round(row["wall_s"] / (parts["predicted_s"] - overhead_s), 3),
            "model_down_s": round(parts["down_s"], 3),
            "model_compute_s": round(parts["compute_s"], 3),
            "model_up_s": round(parts["up_s"], 3),
            "after_s": None if end is None or last is None else round(end - last, 3),
            "nodes": [
                {key: (round(v, 3) if isinstance(v, float) else v) for key, v in n.items() if key != "sent_at"}
                for n in nodes
            ],
        })  # fmt: skip
    nodes = [n for r in rounds for n in r["nodes"]]
    predicted = sum(r["predicted_s"] for r in rounds)
    measured = sum(r["measured_s"] for r in rounds)
    warm = summary.get("warmup_wire_bytes") or {}
    fedcomp_up = int(summary["uplink_wire_bytes"]) + int(warm.get("uplink", 0))
    fedcomp_down = int(summary["downlink_wire_bytes"]) + int(warm.get("downlink", 0))
    kernel_up = sum(v for k, v in shaped.items() if k.startswith("up"))
    kernel_down = sum(v for k, v in shaped.items() if k.startswith("down"))
    return {
        "config": label,
        "uplink": uplink,
        "mbps": mbps,
        "rounds": rounds,
        "predicted_s": round(predicted / len(rounds), 3),
        "measured_s": round(measured / len(rounds), 3),
        "ratio": round(measured / predicted, 3),
        "ratio_range": [min(r["ratio"] for r in rounds), max(r["ratio"] for r in rounds)],
        "within_goal": abs(measured / predicted - 1) <= GOAL,
        "overhead_s": round(overhead_s, 3),
        "framing": round(framing, 4),
        "ratio_without_overhead": round(measured / (predicted - overhead_s * len(rounds)), 3),
        "compute_s": round(_mean([r["model_compute_s"] for r in rounds]), 3),
        "down_model_s": round(_mean([n["down_model_s"] for n in nodes]), 3),
        "down_s": round(_mean([n["down_s"] for n in nodes]), 3),
        "up_model_s": round(_mean([n["up_model_s"] for n in nodes]), 3),
        "up_s": round(_mean([n["up_s"] for n in nodes]), 3),
        "node_s": round(_mean([n["node_s"] for n in nodes]), 3),
        "pickup_s": round(_mean([n["pickup_s"] for n in nodes if n["pickup_s"] is not None]), 3),
        "after_s": round(_mean([r["after_s"] for r in rounds if r["after_s"] is not None]), 3),
        "bytes": {
            "fedcomp_wire": {"up": fedcomp_up, "down": fedcomp_down},
            "superlink": {"up": traffic["inbound_bytes"], "down": traffic["outbound_bytes"]},
            "kernel": {"up": kernel_up, "down": kernel_down},
        },
        "superlink_status": traffic["status"],
        "superlink_clientapp_s": round(traffic["clientapp_s"], 3),
        "final_accuracy": summary.get("final_test_accuracy"),
        "submit_s": round(elapsed, 1),
    }


# ----------------------------------------------------------------------------- output


def skip(reason: str) -> dict[str, Any]:
    print(f"emulated link: skipped: {reason}")
    figures = {"skipped": reason}
    print(json.dumps(figures))
    return figures


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "-"


def print_tables(
    runs: list[dict[str, Any]],
    probes: dict[float, dict[str, float]],
    rounds: int,
    overhead: float = 0.0,
    calibration: dict[str, Any] | None = None,
) -> None:
    print(f"emulated link: LeNet-5-Caffe, {NODES} SuperNodes, {rounds} rounds, dense downlink; "
          f"htb-shaped veth per client and direction")  # fmt: skip
    for mbps, p in probes.items():
        print(f"raw TCP at {mbps:g} Mbit/s, {p['bytes']:,} B: down {p['down_s']:.3f} s, up {p['up_s']:.3f} s, "
              f"8·n/B = {p['model_s']:.3f} s (ratio {p['down_ratio']:.3f} / {p['up_ratio']:.3f})")  # fmt: skip
    if calibration is not None:
        print(f"the runtime's overhead, measured: a dense run at {CALIBRATION_MBPS:g} Mbit/s took "
              f"{calibration['measured_s']:.2f} s a round against the model's {calibration['predicted_s']:.2f} s: "
              f"network.overhead_s = {overhead:.2f} s for the runs below")  # fmt: skip
    else:
        print(f"network.overhead_s = {overhead:.2f} s (given)")
    print()
    print("round time (mean per round; ratio = measured / predicted over all rounds, range over rounds;")
    print("predicted with the runtime's overhead, and without it: transfers and compute only)")
    print(f"{'config':10}{'Mbit/s':>7}{'predicted s':>13}{'measured s':>12}{'ratio':>8}{'range':>14}"
          f"{'w/o overhead':>14}   goal ±15%")  # fmt: skip
    for r in runs:
        lo, hi = r["ratio_range"]
        print(f"{r['config']:10}{r['mbps']:>7g}{r['predicted_s']:>13.2f}{r['measured_s']:>12.2f}{r['ratio']:>8.3f}"
              f"{f'{lo:.2f}–{hi:.2f}':>14}{r['ratio_without_overhead']:>14.3f}   "
              f"{'met' if r['within_goal'] else 'missed'}")  # fmt: skip
    print()
    print("where the time goes (mean per client and round, s). model: 8·framing·bytes/B, and the clients' compute")
    print("(decode + train + encode); logged: from the SuperNodes' log lines: pickup, the round's start to the node")
    print("pulling its message; down, pulling it; node, from received to its reply sending (SuperExec's poll, the")
    print("ClientApp's process start, the compute); up, sending the reply; after, the last reply sent to the row")
    print(f"{'config':10}{'Mbit/s':>7}{'pickup':>8}{'down':>7}{'model':>7}{'node':>7}{'compute':>9}{'up':>7}"
          f"{'model':>7}{'after':>7}")  # fmt: skip
    for r in runs:
        print(f"{r['config']:10}{r['mbps']:>7g}{r['pickup_s']:>8.2f}{r['down_s']:>7.2f}{r['down_model_s']:>7.2f}"
              f"{r['node_s']:>7.2f}{r['compute_s']:>9.2f}{r['up_s']:>7.2f}{r['up_model_s']:>7.2f}"
              f"{r['after_s']:>7.2f}")  # fmt: skip
    print()
    print("bytes over the whole run (warm-up included): fedcomp's wire bytes, the SuperLink's traffic record,")
    print("the kernel's count on the shaped links (every frame: TCP/IP, HTTP, polls, heartbeats)")
    print(f"{'config':10}{'Mbit/s':>7}{'dir':>5}{'fedcomp':>12}{'SuperLink':>12}{'diff':>10}{'/fedcomp':>9}"
          f"{'kernel':>12}{'/fedcomp':>9}")  # fmt: skip
    for r in runs:
        b = r["bytes"]
        for d in ("down", "up"):
            f, s, k = b["fedcomp_wire"][d], b["superlink"][d], b["kernel"][d]
            print(f"{r['config']:10}{r['mbps']:>7g}{d:>5}{f:>12,}{s:>12,}{s - f:>+10,}{_ratio(s, f):>9}"
                  f"{k:>12,}{_ratio(k, f):>9}")  # fmt: skip


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 Mbit/s only, 2 rounds")
    parser.add_argument("--rounds", type=int, help="rounds per run (default 3; --quick 2)")
    parser.add_argument("--mbps", type=float, nargs="+", help="link speeds, both ways (default 1 8; --quick 8)")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs and logs in DIR (default: a temporary folder)")
    parser.add_argument(
        "--overhead-s", type=float, default=None,
        help="the runtime's seconds per round for the model (network.overhead_s) instead of measuring it on an "
             f"unshaped ({CALIBRATION_MBPS:g} Mbit/s) dense run first; 0: the model without it",
    )  # fmt: skip
    parser.add_argument(
        "--framing", type=float, default=FRAMING,
        help=f"link bytes per message byte for the model (network.framing; default {FRAMING:.4f}, Ethernet frames)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    speeds = args.mbps or ([8.0] if args.quick else [1.0, 8.0])
    reason = unavailable()
    if reason is not None:
        return skip(reason)

    def interrupted(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: processes stopped, namespaces deleted

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedcomp-emulated-"))
    work.mkdir(parents=True, exist_ok=True)
    bed, deployment = Testbed(), None
    t0 = time.perf_counter()
    try:
        try:
            bed.setup(speeds[0])
        except SetupError as exc:
            return skip(str(exc))
        deployment = Deployment(bed, work)
        deployment.start()
        probes, runs, calibration = {}, [], None
        overhead = args.overhead_s
        if overhead is None:
            # The runtime's own seconds a round (polls, a process per message): what a round takes beyond the
            # model's transfers and compute when the link is no limit. The shaped runs then carry it.
            calibration = deployment.run("calibrate", UPLINKS["dense"], CALIBRATION_MBPS, rounds, 0.0, args.framing)
            overhead = max(0.0, _mean([r["measured_s"] - r["predicted_s"] for r in calibration["rounds"]]))
        for mbps in speeds:
            bed.set_rate(mbps)
            probes[mbps] = probe(bed, deployment.env, mbps)
            for label, uplink in UPLINKS.items():
                runs.append(deployment.run(label, uplink, mbps, rounds, overhead, args.framing))
    finally:
        if deployment is not None:
            deployment.stop()
        bed.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_tables(runs, probes, rounds, overhead, calibration)
    figures = {
        "overhead_s": round(overhead, 3),
        "framing": round(args.framing, 4),
        "calibration": calibration,
        "rounds": rounds,
        "mbps": speeds,
        "goal": GOAL,
        "within_goal": sum(r["within_goal"] for r in runs),
        "configs": len(runs),
        "probes": {f"{k:g}": {n: round(v, 4) for n, v in p.items()} for k, p in probes.items()},
        "runs": runs,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
