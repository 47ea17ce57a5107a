"""Keep a static C2SP tlog-tiles directory up to date: ``potd ledger publish``.

Every tile and bundle path names immutable content (a partial tile's path carries its
width), so a file that exists is never written again: each round writes only the new
tiles and bundles, then replaces ``checkpoint`` atomically, last (as
:func:`~ledger.export.export_static`, whose atomic write it uses). A reader of the
directory (a static web server, a CDN, a bucket sync) therefore never sees a checkpoint
whose tiles are missing, nor a torn file.

With ``follow``, the publisher reopens nothing: it re-reads the newest stored checkpoint
(verified against the log's key and the stored tree, and never older than the last it
published) every ``interval`` seconds, while any writer (a server on SQLite, frontends
on PostgreSQL) goes on appending.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .export import _write_atomic, bundle_tiles, tile_file
from .log import Log
from .tiles import tiles_for_size


def publish_once(log: Log, out_dir: str, *, fsync: bool = True,
                 gzip_bundles: bool = False) -> tuple[int, int]:
    """Publish the log's current checkpoint into ``out_dir``; returns ``(size, files
    written)`` (the checkpoint included). ``gzip_bundles``: entry bundles stored
    gzip-compressed, to be served with ``Content-Encoding: gzip`` (see ledger.export)."""
    os.makedirs(out_dir, exist_ok=True)
    cp = log.checkpoint()
    written = 0
    for tile in [*tiles_for_size(cp.size), *bundle_tiles(cp.size)]:
        rel = tile.path()
        if os.path.exists(os.path.join(out_dir, *rel.split("/"))):
            continue  # immutable: written once
        _write_atomic(out_dir, rel, tile_file(log, tile, gzip_bundles=gzip_bundles),
                      fsync=fsync)
        written += 1
    _write_atomic(out_dir, "checkpoint", cp.to_bytes(), fsync=fsync)
    return cp.size, written + 1


def publish(log: Log, out_dir: str, *, follow: bool = False, interval: float = 1.0,
            fsync: bool = True, gzip_bundles: bool = False,
            report: Callable[[int, int], None] | None = None,
            stop: Callable[[], bool] = lambda: False) -> None:
    """Publish now; with ``follow``, again whenever the log has grown, until ``stop()``."""
    last = -1
    while True:
        if log.checkpoint().size != last:
            size, written = publish_once(log, out_dir, fsync=fsync, gzip_bundles=gzip_bundles)
            last = size
            if report is not None:
                report(size, written)
        if not follow or stop():
            return
        time.sleep(interval)
        log.refresh()
