"""Export a log as a static C2SP tlog-tiles mirror: plain files any web server can serve.

Layout under ``out_dir`` (docs/protocol.md §2.4)::

    checkpoint                      the latest signed checkpoint note
    tile/<L>/<N>[.p/<W>]            hash tiles (full, and the partial right edge)
    tile/entries/<N>[.p/<W>]        entry bundles (uint16 BE length || entry, each)

Every file is written to a temporary name in its own directory, flushed, fsynced and
then moved into place with :func:`os.replace`, so a reader sees either the old or the
new version of a file, never a torn one. Tiles and bundles are written before the
checkpoint, so a reader that sees the new checkpoint finds every tile it needs.

Only the partial tiles of the exported size are written. Partial tiles left over from an
earlier export into the same directory stay: they hold a prefix of the current data
(the log is append-only), so they are still correct for the older checkpoints.

The export is a snapshot of the checkpoint read at the start: entries appended while it
runs are not included, and the files written are consistent with that checkpoint.

With ``gzip_bundles`` the entry bundles are stored gzip-compressed under their usual
names, as C2SP tlog-tiles allows ("entry bundles MAY be served compressed"). The files
are then not bundles by themselves: the web server must send them with
``Content-Encoding: gzip`` (nginx: ``location /tile/entries/ { add_header
Content-Encoding gzip; types {} default_type application/octet-stream; }``; S3 and most
CDNs: set the object's Content-Encoding metadata at upload). Hash tiles and the
checkpoint stay plain. Use one choice per directory: a server that labels every bundle
gzip breaks on plain ones, and the reverse.
"""

from __future__ import annotations

import gzip
import os
import tempfile

from .log import Log
from .tiles import ENTRIES_LEVEL, TILE_WIDTH, Tile, tiles_for_size


def _write_atomic(root: str, rel: str, data: bytes, *, fsync: bool) -> None:
    path = os.path.join(root, *rel.split("/"))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def bundle_tiles(size: int) -> list[Tile]:
    """Every entry bundle of a tree of ``size`` records: the full ones, then the partial."""
    full, rem = divmod(size, TILE_WIDTH)
    out = [Tile(ENTRIES_LEVEL, n) for n in range(full)]
    if rem:
        out.append(Tile(ENTRIES_LEVEL, full, rem))
    return out


def tile_file(log: Log, tile: Tile, *, gzip_bundles: bool = False) -> bytes:
    """The bytes of ``tile``'s file: the tile, or a gzip-compressed entry bundle."""
    data = log.tile(tile)
    if gzip_bundles and tile.level == ENTRIES_LEVEL:
        return gzip.compress(data, 6, mtime=0)  # mtime=0: the same bytes every time
    return data


def export_static(log: Log, out_dir: str | os.PathLike[str], *, fsync: bool = True,
                  gzip_bundles: bool = False) -> None:
    """Write ``log``'s latest checkpoint, all its tiles and entry bundles under ``out_dir``.

    ``gzip_bundles`` stores entry bundles gzip-compressed (see the module doc).
    ``fsync=False`` skips the per-file fsync (each file is still replaced atomically);
    use it only for throw-away mirrors such as tests.
    """
    root = os.fspath(out_dir)
    os.makedirs(root, exist_ok=True)
    cp = log.checkpoint()
    size = cp.size
    for tile in tiles_for_size(size):
        _write_atomic(root, tile.path(), log.tile(tile), fsync=fsync)
    for tile in bundle_tiles(size):
        _write_atomic(root, tile.path(), tile_file(log, tile, gzip_bundles=gzip_bundles),
                      fsync=fsync)
    _write_atomic(root, "checkpoint", cp.to_bytes(), fsync=fsync)
