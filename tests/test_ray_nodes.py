"""A sweep over a Ray cluster of two nodes (both on 127.0.0.1), and the same sweep losing one of them.

Each node offers one CPU and each job reserves one, so the jobs of a sweep must
spread over both nodes; every run records the node it ran on (tag ``ray_node``).
The second node is then killed hard (SIGKILL to its process group, the head
untouched) while it runs a job; rerunning the sweep completes it on the head,
each grid point FINISHED exactly once and the killed run marked KILLED.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY
from test_scaleout import BIN, assert_complete, free_port, healthy, ray_env, runs_of, start, stop, wait_for

# The GCS notices a lost node after health_check_period x failure_threshold (Ray: 3 s x 5);
# shorter here (but lenient with a loaded machine), so that the lost node is noticed in seconds.
RAY_HEALTH = {"RAY_health_check_initial_delay_ms": "2000", "RAY_health_check_period_ms": "2000",
              "RAY_health_check_timeout_ms": "5000", "RAY_health_check_failure_threshold": "3"}
FITNESS = ["120", "021", "100", "101"]
# Sweep 2 runs longer jobs (201 generations of 500 images, a flush after each), so that one is
# caught mid-run: a run's store opens in the background while its first generations compute, and
# a TINY evolution (0.3 s) is over before its first metrics reach the server.
GENERATIONS = 201
LONGER = [*TINY[:2], "population.size=20", "data.train_size=10000", "data.batch_size=500", *TINY[5:],
          "evolution.epochs=10", "tracking.flush_every=1"]


def worker_ports(n: int = 40, taken: set[int] = frozenset()) -> tuple[int, int]:
    """A range of ``n`` free ports below the ephemeral range (where :func:`free_port`'s come from)."""
    for _ in range(200):
        low = random.randrange(20000, 30000 - n)
        ports = range(low, low + n)
        if taken.intersection(ports):
            continue
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return low, low + n - 1
    pytest.fail("no free range of worker ports")


def node_ports(head: bool, taken: set[int]) -> tuple[list[str], int]:
    """The ``ray start`` options giving a node ports of its own; returns them and its node manager port."""
    low, high = worker_ports(taken=taken)
    taken.update(range(low, high + 1))
    nm = free_port()
    opts = [f"--node-manager-port={nm}", f"--object-manager-port={free_port()}",
            f"--min-worker-port={low}", f"--max-worker-port={high}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    if head:
        opts += [f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
                 "--include-dashboard=false"]
    return opts, nm


NODES_SCRIPT = """
import json, sys
from ray._raylet import GcsClient
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=20)
print(json.dumps({i.node_id.hex(): [i.node_manager_port, i.state == 0] for i in infos.values()}))
"""


def cluster_nodes(gcs: str, env: dict) -> dict[int, tuple[str, bool]]:
    """Node manager port -> (node id, alive), as the cluster's GCS knows them."""
    out = subprocess.run([sys.executable, "-c", NODES_SCRIPT, gcs], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return {port: (node, alive) for node, (port, alive) in json.loads(out.stdout.splitlines()[-1]).items()}


def processes_mentioning(text: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``text`` (a path or port of ours)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                pids.append(int(d.name))
    return pids


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (a node's raylet, its workers: Ray gives them sessions and names of their own)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sweep_cmd(overrides: list[str], sweep_dir: Path, parents: Path, uri: str, gcs: str) -> list[str]:
    return [sys.executable, "run.py", "-m", *overrides, f"parent.cache_dir={parents}", f"tracking.uri={uri}",
            f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={gcs}"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sweep_spreads_over_two_ray_nodes_and_survives_losing_one(tmp_path):
    t0 = time.perf_counter()
    env = ray_env(**RAY_HEALTH)
    ray_dir = Path(tempfile.mkdtemp(prefix="ecomp-ray-", dir="/tmp"))   # short: Ray's socket paths
    port = free_port()
    gcs, uri = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{port}"
    head_log, node_log, mlflow_log = tmp_path / "head.log", tmp_path / "node.log", tmp_path / "mlflow.log"
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
              f"--temp-dir={ray_dir}", "--object-store-memory=100000000"]
    taken: set[int] = set()
    head_opts, head_nm = node_ports(head=True, taken=taken)
    node_opts, node_nm = node_ports(head=False, taken=taken)
    services: list[subprocess.Popen] = []
    sweep = None
    try:
        head = start([str(BIN / "ray"), "start", "--head", f"--port={gcs.split(':')[1]}", *common, *head_opts],
                     head_log, env)
        services.append(head)
        server = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                        "--port", str(port)], mlflow_log, env)
        services.append(server)
        wait_for(lambda: "Ray runtime started" in head_log.read_text(), head, head_log, "ray start --head", 120)
        node = start([str(BIN / "ray"), "start", f"--address={gcs}", *common, *node_opts], node_log, env)
        services.append(node)
        wait_for(lambda: "Ray runtime started" in node_log.read_text(), node, node_log, "ray start (2nd node)", 120)
        wait_for(lambda: healthy(f"{uri}/health"), server, mlflow_log, "mlflow server", 120)
        nodes = cluster_nodes(gcs, env)
        assert set(nodes) == {head_nm, node_nm} and all(alive for _, alive in nodes.values()), nodes
        head_id, node_id = nodes[head_nm][0], nodes[node_nm][0]
        t_up = time.perf_counter() - t0

        # 1. four jobs, one CPU each, two nodes of one CPU: both nodes run jobs
        parents = tmp_path / "parents"
        proc = subprocess.run(sweep_cmd(["fitness=" + ",".join(FITNESS), "seed=0", *TINY], tmp_path / "multirun1",
                                        parents, uri, gcs),
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        client, runs = runs_of(uri)
        assert sorted(r.info.run_name for r in runs) == sorted(f"{f}-seed0" for f in FITNESS)
        for r in runs:
            assert_complete(client, r, generations=6)
        assert {r.data.tags.get("ray_node") for r in runs} == {head_id, node_id}
        t_sweep1 = time.perf_counter() - t0

        # 2. eight longer jobs; SIGKILL the second node (its process group alone) while it runs one
        args2 = ["fitness=" + ",".join(FITNESS), "seed=1,2", *LONGER]
        log2 = open(tmp_path / "sweep2.log", "w")
        sweep = subprocess.Popen(sweep_cmd(args2, tmp_path / "multirun2", parents, uri, gcs), cwd=REPO, stdout=log2,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log2.close()
        killed = None
        deadline = time.monotonic() + 180
        while killed is None:
            assert sweep.poll() is None, (tmp_path / "sweep2.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no job of the second node was seen mid-run"
            running = [r for r in runs_of(uri)[1] if r.info.status == "RUNNING"
                       and r.data.tags.get("ray_node") == node_id and r.data.tags.get("seed") in ("1", "2")]
            # mid-run: its metrics stream live (>= 2 seen) and at most half its generations are done
            seen = [len(client.get_metric_history(r.info.run_id, "accuracy_mean")) for r in running]
            mid = [r for r, n in zip(running, seen) if 2 <= n <= GENERATIONS // 2]
            if mid:
                lost = descendants(node.pid)     # a lost machine: the node and every process it started
                os.killpg(node.pid, signal.SIGKILL)
                kill_all(lost)
                killed = mid[0]
            time.sleep(0.2)
        node.wait(timeout=30)
        # a lost machine: nothing of that node survives (its raylet and workers name its port)
        time.sleep(1)
        kill_all([*processes_mentioning(f"node_manager_port={node_nm}"),
                  *processes_mentioning(f"node-manager-port={node_nm}")])
        assert head.poll() is None, head_log.read_text()[-3000:]
        try:
            sweep.wait(timeout=240)            # it may finish (Ray retries the lost job on the head) or fail
        except subprocess.TimeoutExpired:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
        t_sweep2 = time.perf_counter() - t0
        assert not cluster_nodes(gcs, env)[node_nm][1]            # the GCS knows the node is gone

        # 3. the same sweep again: completes on the head, nothing lost, nothing twice
        proc = subprocess.run(sweep_cmd(args2, tmp_path / "multirun3", parents, uri, gcs),
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        client, runs = runs_of(uri)
        grid = sorted(f"{f}-seed{s}" for f in FITNESS for s in (1, 2))
        later = [r for r in runs if r.data.tags.get("seed") in ("1", "2")]
        finished = [r for r in later if r.info.status == "FINISHED"]
        assert sorted(r.info.run_name for r in finished) == grid                  # each grid point once
        assert {r.info.status for r in later} <= {"FINISHED", "KILLED"}, [(r.info.run_name, r.info.status)
                                                                          for r in later]
        for r in finished:
            assert_complete(client, r, generations=GENERATIONS)
        stale = client.get_run(killed.info.run_id)
        assert stale.info.status == "KILLED" and "killed process" in stale.data.tags["error"]
        assert killed.info.run_id not in {r.info.run_id for r in finished}
        # what the rerun ran, it ran on the head; nothing is left RUNNING
        rerun = [r for r in finished if r.data.tags["sweep"] == str(tmp_path / "multirun3")]
        assert all(r.data.tags["ray_node"] == head_id for r in rerun), [r.data.tags["ray_node"] for r in rerun]
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        print(f"ray nodes + server up in {t_up:.1f} s, sweep 1 done at {t_sweep1:.1f} s, sweep 2 (node killed) "
              f"done at {t_sweep2:.1f} s (exit {sweep.returncode}), {len(rerun)} job(s) left to the rerun, "
              f"whole test {time.perf_counter() - t0:.1f} s")
    finally:
        if sweep is not None and sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
        for proc in reversed(services):
            stop(proc)
        kill_all(processes_mentioning(str(ray_dir)))      # whatever of the cluster outlived its `ray start`
        shutil.rmtree(ray_dir, ignore_errors=True)
