"""pid1.ray against a real Ray cluster on this machine: two nodes (one Ray
cluster for the module), each with its own ``vmexec serve``, a pool of one
warm VM and a cache of its own; a third joins later and is removed in the
middle of a batch.

Every node's services, VMs and sockets live under this module's own
directory, so "no QEMU is left" is checked on QEMUs whose command line
names it: other QEMUs on the machine are not this test's.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray", reason="pid1.ray needs Ray: pip install 'pid1[ray]'")

from ray.cluster_utils import Cluster

import pid1
import pid1.ray

# The label that names a test node; its value picks the node's directory.
LABEL = "pid1-test"

# The custom resource the test nodes advertise, and the pool asks for.
RESOURCE = "pid1"

# Seconds a batch may take before the test calls it hung: a run's own
# deadline is its timeout plus the SDK's and the pool's margins (150 s).
BATCH_DEADLINE_S = 300

# Seconds a lost node's service gets to kill its VMs: SIGTERM from its
# actor's death, 2 s of grace, then the kill.
GONE_S = 30


def qemus_under(directory: Path) -> list[int]:
    """Pids of QEMUs whose command line names ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and os.path.basename(argv[0]).startswith(b"qemu-system")
            and str(directory).encode() in b" ".join(argv)
        ):
            found.append(int(entry.name))
    return found


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.2)


def node_args(name: str) -> dict[str, Any]:
    return {"num_cpus": 1, "resources": {RESOURCE: 1}, "labels": {LABEL: name}}


class RayCluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={**node_args("a"), "include_dashboard": False},
        )
        self.worker = self.cluster.add_node(**node_args("b"))
        ray.init(address=self.cluster.address)

    def settings(self, info: pid1.ray.NodeInfo) -> dict[str, str]:
        name = info.labels[LABEL]
        return {
            "cache_dir": str(self.base / name / "cache"),
            "tmp_dir": str(self.base / name / "tmp"),
        }

    def close(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    if ray.is_initialized():
        pytest.fail("Ray is already initialised in this process: the test makes its own cluster")
    # Jailed QEMUs run as a uid of their own: the nodes' caches and scratch
    # must be reachable by it, which pytest's 0700 directories are not.
    base = Path(tempfile.mkdtemp(prefix="pid1-ray-test-"))
    base.chmod(0o755)
    made = RayCluster(base)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pool(cluster: RayCluster) -> Iterator[pid1.ray.Pool]:
    made = pid1.ray.Pool(
        pool_size=1,
        max_vms=2,
        resources=RESOURCE,
        node_settings=cluster.settings,
        # The accelerator probe (a KVM boot with a deadline) is not what
        # these tests are about, and each node's cache would pay it.
        serve_args=["--accel", "tcg"],
        # Short, so that the node that joins is picked up within the test.
        refresh_interval=2,
    )
    try:
        yield made
    finally:
        made.shutdown()


def test_runs_spread_over_both_nodes_and_each_result_is_right(pool: pid1.ray.Pool) -> None:
    ready = [node for node in pool.nodes() if node.state == "ready"]
    assert len(ready) == 2, pool.nodes()
    results = pool.map([f"print({i} * {i})" for i in range(40)], timeout=60)
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(40)]
    assert all(isinstance(r, pid1.Result) and r.ok for r in results)
    ran = {node.node_id: sum(r.node == node.node_id for r in results) for node in ready}
    assert all(count > 0 for count in ran.values()), ran
    assert sum(ran.values()) == 40
    # Nothing is held once the batch is over.
    assert all(node.running == 0 for node in pool.nodes())


def test_streamed_output_and_refused_input_come_back_as_the_sdks(pool: pid1.ray.Pool) -> None:
    pieces: list[tuple[str, str]] = []
    result = pool.run(
        "import sys\nprint('out')\nprint('err', file=sys.stderr)",
        on_stdout=lambda text: pieces.append(("stdout", text)),
        on_stderr=lambda text: pieces.append(("stderr", text)),
    )
    assert result.stdout == "out\n" and result.stderr == "err\n"
    assert "".join(text for stream, text in pieces if stream == "stdout") == "out\n"
    assert "".join(text for stream, text in pieces if stream == "stderr") == "err\n"
    with pytest.raises(pid1.InvalidRequestError) as refused:
        pool.run("print(1)", env={"1BAD": "x"})
    assert refused.value.status == 400 and refused.value.field


def test_a_sessions_steps_all_run_on_its_node(pool: pid1.ray.Pool) -> None:
    with pool.session() as session:
        steps = [session.exec("x = 1"), session.exec("x += 1"), session.exec("print(x)")]
        session.write_file("note.txt", "kept")
        assert session.read_file("note.txt") == b"kept"
        assert "note.txt" in [entry.name for entry in session.list_files()]
        held = {node.node_id: node.sessions for node in pool.nodes()}
        assert held[session.node] == 1
    assert steps[-1].stdout == "2\n"
    assert {step.node for step in steps} == {session.node}
    assert session.closed
    assert all(node.sessions == 0 for node in pool.nodes())


def test_a_pool_can_use_the_service_already_running_on_a_node(
    cluster: RayCluster, client: pid1.Client
) -> None:
    with pid1.ray.Pool(labels={LABEL: "a"}, url=client.url, refresh_interval=0) as borrowed:
        (node,) = borrowed.nodes()
        result = borrowed.run("print('borrowed')")
        assert result.stdout == "borrowed\n" and result.node == node.node_id
        assert borrowed.health()[node.node_id]["service_pid"] is None
    # Its shutdown left the service it did not start running.
    assert client.run("print(1)").stdout == "1\n"


def test_a_node_lost_mid_batch_fails_its_runs_over_and_its_session_says_so(
    cluster: RayCluster, pool: pid1.ray.Pool
) -> None:
    joined = cluster.cluster.add_node(**node_args("c"))
    # The pool looks at the cluster by itself and starts the joined node's service.
    wait_for(
        lambda: sorted(node.state for node in pool.nodes()) == ["ready"] * 3,
        300,
        "the joined node's service is not ready",
    )
    nodes = pool.nodes()
    node_c = next(node.node_id for node in nodes if node.labels[LABEL] == "c")
    session = pool.session(node=node_c)
    session.exec("x = 41")

    codes = [f"import time\ntime.sleep(1)\nprint({i})" for i in range(18)]
    futures = [pool.submit(code, timeout=60) for code in codes]
    wait_for(
        lambda: any(node.node_id == node_c and node.running > 0 for node in pool.nodes()),
        60,
        "no run was placed on the joined node",
    )
    cluster.cluster.remove_node(joined)
    _, hung = concurrent.futures.wait(futures, timeout=BATCH_DEADLINE_S)
    assert not hung, f"{len(hung)} runs never ended"

    completed = 0
    for index, future in enumerate(futures):
        error = future.exception()
        if error is None:
            assert future.result().stdout == f"{index}\n"
            completed += 1
        else:
            assert isinstance(error, pid1.ray.NodeLostError), repr(error)
            assert node_c in str(error) and "lost" in str(error)
    # A run is a fresh VM: each one on the lost node was retried elsewhere.
    assert completed == len(codes)
    assert any(f.result().node != node_c for f in futures)

    with pytest.raises(pid1.SessionClosedError) as gone:
        session.exec("print(x)")
    assert isinstance(gone.value, pid1.ray.SessionLostError)
    assert node_c in str(gone.value) and "lost" in str(gone.value)
    assert session.closed
    assert {node.node_id: node.state for node in pool.nodes()}[node_c] == "lost"
    wait_for(
        lambda: not qemus_under(cluster.base / "c"),
        GONE_S,
        "the lost node's QEMUs are still running",
    )
    # The pool goes on with the two nodes left.
    assert pool.run("print('after')").stdout == "after\n"


def test_shutdown_stops_every_nodes_service_and_leaves_no_qemu(
    cluster: RayCluster, pool: pid1.ray.Pool
) -> None:
    services = [report["service_pid"] for report in pool.health().values()]
    assert len(services) == 2 and all(services)
    session = pool.session()
    session.exec("print(1)")
    assert qemus_under(cluster.base)
    pool.shutdown()
    assert not qemus_under(cluster.base)
    assert not [pid for pid in services if Path(f"/proc/{pid}").exists() and _alive(pid)]
    assert session.closed
    with pytest.raises(pid1.UnavailableError, match="shut down"):
        pool.run("print(1)")


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
