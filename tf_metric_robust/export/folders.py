"""Versioned export folders as TF Serving watches them, published atomically.

A version is written to a hidden temporary folder next to it, fsynced and renamed into place, so
a crash never leaves a half-written version where TF Serving (or `latest_version`) would load it.
"""

import os
import shutil
import uuid

from tf_metric_robust.config import UserError

TEMPORARY_PREFIX = ".tmp-export-"


def versions(export_dir):
    """Sorted integer versions under export_dir (children named by digits, as TF Serving reads)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if name.isdigit() and os.path.isdir(os.path.join(export_dir, name))
    )


def latest_version(export_dir):
    """Path of the newest loadable version folder in export_dir, export_dir itself if it is an
    unversioned SavedModel, or None."""
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    for version in reversed(versions(export_dir)):
        path = os.path.join(export_dir, str(version))
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            return path
    return None


def check_destination(export_dir, version):
    """Refuses a remote export_dir (a version is renamed into place, which needs a local
    folder) and a version that is not an integer >= 1."""
    if "://" in str(export_dir):
        raise UserError(
            f"export_dir {export_dir} must be a local folder (the version is renamed into place "
            "atomically); export locally and copy the version folder"
        )
    if version is not None and (int(version) != version or version < 1):
        raise UserError(f"version must be an integer >= 1, got {version}")


def write_version(export_dir, version, write):
    """Calls write(folder) on a hidden temporary folder in export_dir, fsyncs it and renames it
    to export_dir/<version> (the next free version when None); returns that path. An existing
    version is refused before writing; a failed write leaves nothing behind."""
    os.makedirs(export_dir, exist_ok=True)
    if version is not None:
        refuse_existing(export_dir, int(version))
    temporary = os.path.join(export_dir, f"{TEMPORARY_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        os.makedirs(temporary)
        write(temporary)
        sync_tree(temporary)
        final = publish(temporary, export_dir, version)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    sync_directory(export_dir)
    return final


def refuse_existing(export_dir, version):
    if os.path.exists(os.path.join(export_dir, str(version))):
        raise UserError(
            f"version {version} already exists in {export_dir}; versions are never "
            "overwritten (TF Serving may be serving it): pick another --version"
        )


def publish(temporary, export_dir, version, attempts=5):
    """Renames the finished temporary folder to export_dir/<version> (atomic on POSIX); without
    a version, takes the next free one, retrying if a concurrent export takes it first."""
    for _ in range(attempts):
        chosen = int(version) if version is not None else (versions(export_dir) or [0])[-1] + 1
        refuse_existing(export_dir, chosen)
        final = os.path.join(export_dir, str(chosen))
        try:
            os.rename(temporary, final)  # fails if a concurrent export created `final` meanwhile
            return final
        except OSError:
            if not os.path.exists(final):
                raise  # a real file-system error; a taken version is refused or skipped above
    raise UserError(f"{export_dir}: concurrent exports kept taking the next version; retry")


def sync_tree(root):
    """fsyncs every file and folder under root, so the rename publishes complete files only."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        sync_directory(folder)


def sync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
