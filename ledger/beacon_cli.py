"""``potd beacon``: a local drand-compatible beacon (keygen, serve, info) and a round
fetcher. Thin: parse arguments, one library call, print."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .cli import PotdGroup, write_private_key
from .drand import BeaconKey
from .errors import UsageError


@click.group(cls=PotdGroup)
def beacon() -> None:
    """drand beacons: a local 1-of-1 test beacon, chain info and rounds."""


def _key(path: str) -> BeaconKey:
    try:
        return BeaconKey.from_json(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read beacon key {path}: {e.strerror}") from None


@beacon.command()
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Write the secret key (JSON, mode 0600) here.")
@click.option("--period", default=1, show_default=True, help="Seconds between rounds.")
@click.option("--genesis", type=int, help="Unix time of round 1 (default: now).")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(out: str, period: int, genesis: int | None, force: bool) -> None:
    """Create a local beacon key (quicknet scheme, bls-unchained-g1-rfc9380)."""
    if period < 1:
        raise UsageError("--period must be at least 1 second")
    key = BeaconKey.generate(period, int(time.time()) if genesis is None else genesis)
    write_private_key(out, json.dumps(key.to_json()), force)
    click.echo(f"chain {key.info.hash_hex}")


@beacon.command()
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Beacon key file (from `potd beacon keygen`).")
def info(key: str) -> None:
    """Print the chain info JSON of a local beacon key (pin it with --beacon-chain)."""
    click.echo(json.dumps(_key(key).info.to_json(), indent=2))


@beacon.command()
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Beacon key file (from `potd beacon keygen`).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True)
def serve(key: str, host: str, port: int) -> None:
    """Serve drand's HTTP API (/info, /public/latest, /public/ROUND, also under /HASH/).

    Each round is published at its scheduled time (425 before), signed with the key."""
    from .beacon_server import BeaconServer

    srv = BeaconServer(_key(key), host, port)
    click.echo(f"beacon chain {srv.info.hash_hex} on {srv.url}", err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


@beacon.command("get")
@click.option("--beacon", "url", required=True, help="drand HTTP beacon URL.")
@click.option("--beacon-chain", "chain", required=True,
              help="Pinned chain: quicknet, mainnet, a known chain hash, or an /info file.")
@click.argument("round_", metavar="ROUND", type=int)
def get(url: str, chain: str, round_: int) -> None:
    """Fetch ROUND, verify it under the pinned chain and print it."""
    from .beacon_client import BeaconClient, load_chain

    c = BeaconClient(url, load_chain(chain))
    try:
        r = c.get_round(round_)
    finally:
        c.close()
    if r is None:
        raise UsageError(f"round {round_} is not published yet")
    click.echo(json.dumps(r.to_json()))
