"""CurveZMQ on the mesh, attacked with real ``narwhal`` processes and raw ZeroMQ peers.

Each attack runs a job that would create a marker file and asserts the file
never appears; each has a control that shows the same job does run when the
peer is the real one, so a test cannot pass because nothing works.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from narwhal.mesh import protocol as p
from tests.support.cluster import MESH, Cluster
from tests.support.daemons import Client, Daemon, narwhal
from tests.support.eventually import eventually
from tests.support.keys import MeshKeys
from tests.support.ports import free_port
from tests.support.repos import Repo

MakeRepo = Callable[..., Repo]


def marker_repo(make_repo: MakeRepo, marker: Path, seconds: float = 0) -> Repo:
    step = f"touch {marker} && sleep {seconds}"
    return make_repo({"narwhal.yml": f"steps:\n  - name: s\n    command: {step!r}\n"})


def refused(api: Client) -> dict[str, str]:
    return {r["endpoint"]: r["reason"] for r in api.http.get("/api/runners").json()["refused"]}


def ready(api: Client) -> dict[str, dict[str, Any]]:
    runners = api.http.get("/api/runners").json()["runners"]
    return {r["id"]: r for r in runners if r["state"] == "ready"}


# a rogue dispatcher (or a step's container) connecting to a real runner


def rogue_dispatcher(
    endpoint: str, repo: Path, *, curve: tuple[bytes, bytes] | None, wait: float = 2.0
) -> bool:
    """Say HELLO like a dispatcher, send a JOB once READY comes; True if READY came."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:  # a CURVE server with this key pair (no ZAP: it admits anyone)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = curve
    sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"rogue")
    sock.connect(endpoint)
    sock.send_multipart([b"rogue", p.encode(p.Hello(session="rogue"))])
    got_ready = False
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            _, frame = sock.recv_multipart()
            message = p.decode(frame)
            if isinstance(message, p.Ready) and not got_ready:
                got_ready = True
                job = p.Job(
                    job_id=1,
                    attempt=1,
                    runner_session=message.session,
                    repo=str(repo),
                    ref="refs/heads/main",
                    sha=None,
                    event="push",
                )
                sock.send_multipart([b"rogue", p.encode(job)])
                deadline = time.monotonic() + 10  # time for the job to run
            if isinstance(message, p.Done):
                break
    finally:
        sock.close(0)
        ctx.term()
    return got_ready


def test_a_rogue_dispatcher_gets_no_ready_and_runs_nothing(
    tmp_path: Path, make_repo: MakeRepo
) -> None:
    keys = MeshKeys(tmp_path)
    port = free_port()
    runner = Daemon(
        ["runner", "--discovery", "none", "--listen", f"tcp://127.0.0.1:{port}", "--id", "r1"]
        + ["--work-dir", str(tmp_path / "work"), *MESH, *keys.runner("r1")]
    )
    endpoint = f"tcp://127.0.0.1:{port}"
    marker = tmp_path / "ran"
    repo = marker_repo(make_repo, marker)
    try:
        unknown = zmq.curve_keypair()
        wrong_secret = (keys.server.public, zmq.curve_keypair()[1])  # the public key is public
        for name, curve in (
            ("an unknown server key", unknown),
            ("the real public key without its secret", wrong_secret),
            ("no CURVE: a plain socket, as a step's container would open", None),
        ):
            assert not rogue_dispatcher(endpoint, repo.path, curve=curve), name
            assert not marker.exists(), name
        # Control: the holder of the server's secret key gets READY and its JOB runs.
        assert rogue_dispatcher(endpoint, repo.path, curve=(keys.server.public, keys.server.secret))
        eventually(marker.exists, timeout=10, what="the real dispatcher's job")
    finally:
        assert runner.stop() == 0


# runners the dispatcher must not use


def test_an_untrusted_runner_is_refused_until_its_key_is_trusted(
    cluster: Cluster, make_repo: MakeRepo, tmp_path: Path
) -> None:
    port = cluster.ports.setdefault("stranger", free_port())
    cluster.start_runner("stranger", 1, keys=cluster.keys.runner("stranger", trusted=False))
    api = cluster.start_dispatcher()
    endpoint = f"tcp://127.0.0.1:{port}"
    eventually(lambda: endpoint in refused(api), timeout=10, what="the stranger refused")
    assert "not trusted" in refused(api)[endpoint]
    marker = tmp_path / "ran"
    job = api.submit(marker_repo(make_repo, marker))
    time.sleep(2)  # several reconnect intervals: it is not retried, and gets nothing
    assert api.job(job)["state"] == "queued" and not marker.exists()
    assert not ready(api)

    # Trusting its key (no restart) lets it in, and the job runs there.
    trusted = narwhal(
        "keys",
        "trust",
        str(cluster.keys.runner_keys / "stranger.key"),
        "--id",
        "stranger",
        "--keys-dir",
        str(cluster.keys.dir),
    )
    assert trusted.returncode == 0, trusted.stderr
    assert api.wait(job, timeout=20)["state"] == "success" and marker.exists()
    # libzmq kept retrying the refused connection all along (disconnect does
    # not stop it): it must not get in beside the new one, or the runner's
    # DEALER splits its frames between the two and half are lost.
    assert cluster.dispatcher is not None
    strays = [line for line in cluster.dispatcher.stderr_lines if "unknown peer" in line]
    assert not strays, strays
    assert cluster.health()["bad_frames"] == 0
    assert endpoint not in refused(api)


def test_a_trusted_key_claiming_another_runner_id_is_refused(
    cluster: Cluster, make_repo: MakeRepo, tmp_path: Path
) -> None:
    # The key of runner "alice" used by a runner that says it is "bob".
    cluster.start_runner("bob", 1, keys=cluster.keys.runner("alice"))
    cluster.start_runner("carol", 1)
    api = cluster.start_dispatcher()
    bob = f"tcp://127.0.0.1:{cluster.ports['bob']}"
    eventually(lambda: bob in refused(api), timeout=10, what="bob refused")
    assert "trusted as 'alice' claims runner id 'bob'" in refused(api)[bob]
    assert api.http.get("/health").json()["bad_frames"] >= 1
    eventually(lambda: "carol" in ready(api), timeout=10, what="carol ready")
    marker = tmp_path / "ran"
    job = api.wait(api.submit(marker_repo(make_repo, marker)))
    assert job["runner_id"] == "carol" and set(ready(api)) == {"carol"}


def test_revoking_a_key_drops_the_runner_requeues_its_job_and_keeps_it_out(
    cluster: Cluster, make_repo: MakeRepo, tmp_path: Path
) -> None:
    cluster.start_runner("r1", 1)
    api = cluster.start_dispatcher()
    cluster.wait_ready(1)
    job = api.submit(marker_repo(make_repo, tmp_path / "ran", seconds=30))
    api.wait(job, {"running"})
    revoked = narwhal("keys", "revoke", "r1", "--keys-dir", str(cluster.keys.dir))
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    eventually(lambda: "r1" not in ready(api), timeout=5, what="r1 dropped")
    assert time.monotonic() - started < 5
    record = api.wait(job, {"queued"}, timeout=5)
    assert "revoked" in record["reason"] and record["attempt"] == 2
    time.sleep(2)  # it is not let back in
    assert "r1" not in ready(api) and api.job(job)["state"] == "queued"
    assert "revoked" in refused(api)[f"tcp://127.0.0.1:{cluster.ports['r1']}"]
    assert cluster.dispatcher is not None and cluster.dispatcher.proc.poll() is None
    # The runner was told why, not left to see a dispatcher gone silent.
    told = "the dispatcher refused this runner: the key of runner r1 was revoked"
    assert told in "".join(cluster.runners["r1"].stderr_lines)


def test_pinned_labels_replace_what_ready_claims(cluster: Cluster) -> None:
    flags = cluster.keys.runner("gpu")
    cluster.keys.trust(cluster.keys.pair("gpu").public, "gpu", {"gpu": "none"})
    cluster.start_runner("gpu", 1, "--labels", "gpu=a100", keys=flags)
    api = cluster.start_dispatcher()
    cluster.wait_ready(1)
    assert ready(api)["gpu"]["labels"] == {"gpu": "none"}


# narwhal keys


def test_keys_commands_and_file_modes(tmp_path: Path) -> None:
    made = narwhal("keys", "generate", "--dir", str(tmp_path / "k"), "--name", "r1")
    assert made.returncode == 0, made.stderr
    public, secret = tmp_path / "k" / "r1.key", tmp_path / "k" / "r1.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and public.stat().st_mode & 0o077 == 0o044
    again = narwhal("keys", "generate", "--dir", str(tmp_path / "k"), "--name", "r1")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr

    where = ["--keys-dir", str(tmp_path / "d")]
    ok = narwhal("keys", "trust", str(public), "--id", "r1", "--labels", "os=linux", *where)
    assert ok.returncode == 0, ok.stderr
    for argv, message in (
        (["trust", str(secret), "--id", "r1"], "holds a secret key"),
        (["trust", str(public), "--id", "r2"], "already trusted as runner 'r1'"),
        (["trust", str(tmp_path / "missing.key"), "--id", "r3"], "cannot read it"),
        (["revoke", "nobody"], "no trusted key for runner 'nobody'"),
    ):
        done = narwhal("keys", *argv, *where)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("narwhal: ") and message in done.stderr, done.stderr
    listing = narwhal("keys", "list", *where).stdout
    assert "runner r1 " in listing and "labels=os=linux" in listing
    assert narwhal("keys", "revoke", "r1", *where).returncode == 0
    assert "runner r1" not in narwhal("keys", "list", *where).stdout

    # A secret key that others may read is refused at start, in one line.
    secret.chmod(0o644)
    done = narwhal(
        "runner", "--executor", "local", "--key", str(secret), "--dispatcher-key", str(public)
    )
    assert done.returncode == 2 and "readable by others" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    missing = narwhal("runner", "--executor", "local", "--work-dir", str(tmp_path))
    assert missing.returncode == 2 and "--dispatcher-key" in missing.stderr
