"""Preparing a tfds dataset safely: one process at a time, and a fast, honest offline error.

Two processes preparing the same dataset in one data_dir (a `make train` next to the test suite)
could see each other's half-written folder; an exclusive file lock in the data_dir around
download_and_prepare, with a re-check once the lock is held, makes the second process wait and
then read what the first one wrote. Offline, tfds retries every download through urllib3
(MAX_RETRIES = 10, backoff 0.2 s doubling: ~205 s, tensorflow_datasets/core/download/
downloader.py) and then reports a NameResolutionError that reads like a data_dir problem; a
resolve-and-connect check of the source hosts first fails in about a second and says what failed.
"""

import contextlib
import fcntl
import logging
import os
import socket
import urllib.parse
import urllib.request

import tensorflow as tf

from tf_metric_robust.config import UserError

CONNECT_TIMEOUT_SECONDS = 10
# Exception types (by name, from socket, urllib3 and requests) that mean "no way to the server".
_NETWORK_ERRORS = (
    "gaierror",
    "NameResolutionError",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ConnectionError",
    "ConnectTimeout",
    "ProxyError",
)


class NoNetworkError(UserError):
    """The dataset must be downloaded and its source cannot be reached from this machine."""


def prepare(builder, make_builder, name, download):
    """Prepares the dataset of tfds `builder` under the data_dir's lock; returns a prepared builder.

    Args:
      builder: a tfds builder whose data is not prepared.
      make_builder: () -> a new builder of the same dataset (made again once the lock is held:
        another process may have prepared the dataset, and an older builder misses its splits).
      name: the dataset's name in messages.
      download: the caller allowed downloading (checks the network first when files are needed).
    """
    with _lock(builder.data_dir_root, builder.name):
        builder = make_builder()
        if is_prepared(builder):  # another process finished while this one waited
            return builder
        if download:
            check_network(builder, name)
        try:
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 (re-raised unless it is a network failure)
            reason = network_failure(error)
            if reason is None:
                raise
            raise NoNetworkError(_no_network_message(name, reason)) from None
    return builder


def is_prepared(builder):
    """builder.is_prepared() without tfds' warning "Variant folder ... has no dataset_info.json"
    for a folder that does not exist yet (it read like a damaged dataset on every first run)."""
    info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    return tf.io.gfile.exists(info) and builder.is_prepared()


@contextlib.contextmanager
def _lock(data_dir_root, builder_name):
    """Exclusive flock on <data_dir>/.<builder>.prepare.lock (local folders; remote: no lock)."""
    root = os.fspath(data_dir_root)
    if "://" in root:  # gs:// and other remote data dirs have no flock
        yield
        return
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f".{builder_name}.prepare.lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger(__name__).warning(
                "waiting for another process preparing %s in %s", builder_name, root
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _downloaded_urls(builder):
    """URLs with a finished download in <data_dir>/downloads (tfds writes <file>.INFO for each)."""
    folder = os.path.join(os.fspath(builder.data_dir_root), "downloads")
    text = []
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            if entry.endswith(".INFO"):
                with open(os.path.join(folder, entry), errors="replace") as handle:
                    text.append(handle.read())
    return "\n".join(text)


def check_network(builder, name):
    """Raises NoNetworkError unless every source host still to download from resolves and
    accepts a connection (through the proxy of the environment when one applies)."""
    urls = sorted(getattr(builder, "url_infos", None) or {})
    downloaded = _downloaded_urls(builder) if urls else ""
    targets = {}
    for url in urls:
        if url in downloaded:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https", "ftp") or not parts.hostname:
            continue
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            target = (proxy_parts.hostname, proxy_parts.port or 80, f"proxy {proxy}")
        else:
            port = parts.port or {"http": 80, "https": 443, "ftp": 21}[parts.scheme]
            target = (parts.hostname, port, None)
        targets.setdefault(target, url)
    for (host, port, via), url in sorted(targets.items(), key=str):
        where = f"{host}" + (f" ({via})" if via else "")
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise NoNetworkError(
                _no_network_message(name, f"cannot resolve {where} for {url}: {error}")
            ) from None
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
        except OSError as error:
            raise NoNetworkError(
                _no_network_message(name, f"cannot connect to {where}:{port} for {url}: {error}")
            ) from None


def _wrapped(error):
    """The exceptions `error` carries: cause, context, urllib3's .reason, exception args."""
    parts = [error.__cause__, error.__context__, getattr(error, "reason", None), *error.args]
    return [part for part in parts if isinstance(part, BaseException)]


def network_failure(error):
    """A one-line reason if `error` (or what it wraps) is a resolution/connection failure: the
    innermost such exception (requests' ConnectionError wraps urllib3's NameResolutionError)."""
    found, seen, todo = None, set(), [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if any(cls.__name__ in _NETWORK_ERRORS for cls in type(current).__mro__):
            found = current  # breadth first: a later match is wrapped deeper, more specific
        todo += _wrapped(current)
    if found is None:
        return None
    return " ".join(f"{type(found).__name__}: {found}".split())[:300]


def _no_network_message(name, reason):
    return (
        f"cannot download dataset {name!r}: no network access to the dataset's source "
        f"({reason}); connect this machine, or prepare the dataset on one that is connected "
        "and pass that data folder as --data_dir"
    )
