"""Dataset preparation: two processes preparing one dataset at once both succeed (file lock), and
an offline --download fails at once naming the network, not the data folder. No test touches the
network: name resolution and connections are patched."""

import os
import socket
import subprocess
import sys
import time

import pytest

import support
import requests
import urllib3

from tf_metric_robust import data
from tf_metric_robust.data import preparation as dataset_preparation

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

ROOT = support.ROOT

_PREPARE = """
import os, sys, time
from tf_metric_robust import data  # imports TensorFlow before the start line
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.01)
train = data.eval_size("mnist5k", split="train", data_dir=sys.argv[1])
test = data.eval_size("mnist5k", data_dir=sys.argv[1])
print("counts", train, test)
"""


def test_two_processes_preparing_mnist5k_at_once_both_succeed(tmp_path):
    data_dir, go = tmp_path / "tfds", tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(data_dir), str(go)],
            cwd=support.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        time.sleep(1)
        go.touch()  # both start preparing together, after their slow imports
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert stdout.splitlines()[-1] == "counts 4000 1000", (stdout, stderr[-3000:])
    # One process prepared while the other waited on the lock, then read the finished folder.
    assert sum("waiting for another process preparing mnist5k" in err for _, err in outputs) == 1
    assert not [name for name in os.listdir(data_dir / "mnist5k") if "incomplete" in name]


@pytest.fixture
def offline(monkeypatch):
    """Name resolution fails at once, as on a machine without network; no socket may connect."""
    calls = []

    def no_resolution(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolution)
    monkeypatch.setattr(socket, "create_connection", no_connection)
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_offline_download_fails_at_once_naming_the_network(tmp_path, offline):
    started = time.time()
    with pytest.raises(dataset_preparation.NoNetworkError) as error:
        data.eval_dataset("cifar10", batch_size=8, data_dir=str(tmp_path), download=True)
    seconds = time.time() - started
    message = str(error.value)
    assert "no network access to the dataset's source" in message
    assert "cannot resolve www.cs.toronto.edu" in message and "cifar-10" in message
    assert "writable" not in message  # the folder is fine; the network is not
    assert offline == ["www.cs.toronto.edu"]  # failed after the first resolution, no retries
    assert seconds < 5, seconds
    assert not os.path.exists(tmp_path / "cifar10")


def test_offline_through_a_proxy_names_the_proxy(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with pytest.raises(dataset_preparation.NoNetworkError, match=r"proxy\.example \(proxy "):
        data.eval_dataset("cifar10", batch_size=8, data_dir=str(tmp_path), download=True)
    assert offline == ["proxy.example"]


def test_refused_connection_is_a_network_error(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: [])

    def refused(address, timeout=None):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    with pytest.raises(dataset_preparation.NoNetworkError, match="cannot connect to"):
        data.eval_dataset("mnist", batch_size=8, data_dir=str(tmp_path), download=True)


def test_failure_inside_tfds_download_is_reported_as_network(tmp_path, monkeypatch):
    """If the host answers the check but the download then cannot connect, say so too."""
    import tensorflow_datasets as tfds

    resolution = urllib3.exceptions.NameResolutionError(
        "www.cs.toronto.edu", None, socket.gaierror(-3, "Temporary failure in name resolution")
    )
    wrapped = requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/~kriz/cifar-10-binary.tar.gz", reason=resolution)
    )

    def download_and_prepare(self, *args, **kwargs):
        raise RuntimeError("tfds download failed") from wrapped

    monkeypatch.setattr(dataset_preparation, "check_network", lambda builder, name: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    with pytest.raises(
        dataset_preparation.NoNetworkError,
        match=r"no network access .*NameResolutionError.*www\.cs\.toronto\.edu",
    ):
        data.eval_dataset("cifar10", batch_size=8, data_dir=str(tmp_path), download=True)


def test_network_failure_ignores_other_errors():
    assert dataset_preparation.network_failure(ValueError("bad checksum")) is None
    assert "ConnectionRefusedError" in dataset_preparation.network_failure(
        RuntimeError("download failed", ConnectionRefusedError(111, "refused"))
    )
