"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 end with identical weights."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_to_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        processes.append(
            subprocess.Popen(
                [sys.executable, os.path.join(HERE, "multi_worker_script.py"), str(tmp_path / f"w{index}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=600)
            outputs.append(out)
    finally:
        for process in processes:
            process.kill()
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out[-3000:]
        assert "worker done 2" in out
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    names = [name for name in first.files if name != "loss"]
    assert len(names) > 10
    for name in names:
        np.testing.assert_array_equal(first[name], second[name])
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-5)  # logs are the global loss
    assert np.isfinite(first["loss"]).all()
