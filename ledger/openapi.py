"""The OpenAPI 3.1 description of the log server's JSON API (docs/protocol.md §2.5), served at
``GET /openapi.json``. The tlog-tiles read API (checkpoint, tiles, entry bundles) is
described by C2SP and only listed here."""

from __future__ import annotations

from typing import Any

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_B64 = {"type": "string", "contentEncoding": "base64"}
_UINT = {"type": "integer", "minimum": 0}


def _err(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _q(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": _UINT}


_WRITE_ERRORS = {
    "400": _err("malformed or non-canonical JSON, or a malformed statement"),
    "401": _err("a trainer signature does not verify (bad_signature)"),
    "403": _err("signer not allowed (signer_not_allowed) or not the run's signer "
                "(wrong_signer)"),
    "409": _err("conflict with the run's state: wrong_seq, wrong_prev, duplicate (the body "
                "carries the existing index), unknown_run, run_closed, run_exists"),
    "413": _err("an entry over 65535 bytes, or a request over the server's limit"),
    "503": _err("pushback or storage failure; retry after the Retry-After header"),
}


def openapi_document(origin: str, vkey: str, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document for a log with this origin and verifier key."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"potd log {origin}",
            "version": version,
            "description": (
                "A potd transparency log: signed training statements in an RFC 6962 Merkle "
                "tree. The read API follows C2SP tlog-tiles: GET /checkpoint (a C2SP "
                "signed-note checkpoint), GET /tile/<L>/<N>[.p/<W>] (hash tiles) and GET "
                "/tile/entries/<N>[.p/<W>] (entry bundles). This document describes the "
                f"JSON write and convenience API. Log verifier key: {vkey}"),
        },
        "paths": {
            "/add": {"post": {
                "summary": "Sequence one statement",
                "description": ("The body is the statement's exact canonical JSON bytes. The "
                                "reply comes after the statement is durably stored and "
                                "integrated into a signed checkpoint."),
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Statement"}}}},
                "responses": {"200": _ok("AddReply"), **_WRITE_ERRORS},
            }},
            "/add-batch": {"post": {
                "summary": "Sequence several statements, all or nothing",
                "description": ("A JSON array of statements, each element in its exact "
                                "canonical bytes (whitespace between elements is allowed). "
                                "Errors name the failing element in 'statement'."),
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "array", "minItems": 1,
                               "items": {"$ref": "#/components/schemas/Statement"}}}}},
                "responses": {"200": {"description": "one reply per statement, in order",
                                      "content": {"application/json": {"schema": {
                                          "type": "array",
                                          "items": {"$ref": "#/components/schemas/AddReply"}}}}},
                              **_WRITE_ERRORS},
            }},
            "/proof/inclusion": {"get": {
                "summary": "Inclusion proof of a record, by index or by leaf hash",
                "parameters": [
                    _q("index", "log index of the record (or give leaf_hash)"),
                    {"name": "leaf_hash", "in": "query", "required": False,
                     "description": "hex RFC 6962 leaf hash of the record", "schema": _HEX64},
                    _q("size", "tree size (default: the size of the checkpoint GET "
                               "/checkpoint serves: with witnesses, the newest witnessed)"),
                ],
                "responses": {"200": _ok("InclusionProof"),
                              "400": _err("bad parameters, or index/size beyond the tree"),
                              "404": _err("no record with that leaf hash")},
            }},
            "/proof/consistency": {"get": {
                "summary": "Consistency proof between two tree sizes (RFC 9162 2.1.4)",
                "parameters": [_q("from", "the older tree size", True),
                               _q("to", "the newer tree size (default: the size of the "
                                        "checkpoint GET /checkpoint serves)")],
                "responses": {"200": _ok("ConsistencyProof"),
                              "400": _err("bad parameters or sizes")},
            }},
            "/entries": {"get": {
                "summary": "Raw entries [start, end), base64, at most one page (1,000 "
                           "entries or 1 MiB of entry bytes; `end` says where it stopped)",
                "parameters": [_q("start", "first index", True),
                               _q("end", "end index, exclusive (default and cap: one page)")],
                "responses": {"200": _ok("Entries"), "400": _err("bad range")},
            }},
            "/runs/{run}": {"get": {
                "summary": "Log indexes of a run's statements, in seq order",
                "parameters": [{"name": "run", "in": "path", "required": True,
                                "schema": _HEX64}],
                "responses": {"200": _ok("Run"), "400": _err("malformed run id"),
                              "404": _err("no such run in this log")},
            }},
            "/checkpoint": {"get": {
                "summary": "The log's signed checkpoint (C2SP tlog-checkpoint signed note)",
                "description": ("With witnesses configured, the newest checkpoint that met "
                                "the witness quorum, with their cosignatures; the tree may "
                                "already be larger (see /health)."),
                "responses": {
                    "200": {"description": "the signed note",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "503": _err("witnessing is configured and no checkpoint has met the "
                                "quorum yet; retry after the Retry-After header")},
            }},
            "/health": {"get": {
                "summary": "Liveness, the current tree size, sequencing and witnessing state",
                "responses": {"200": _ok("Health"),
                              "503": _ok("Health", "storage failing: status "
                                         "storage_failed, with detail and hint")},
            }},
        },
        "components": {"schemas": {
            "Statement": {
                "type": "object",
                "required": ["body", "kind", "run", "seq", "sig", "signer", "v"],
                "additionalProperties": False,
                "properties": {
                    "body": {"type": "object"},
                    "kind": {"enum": ["run.open", "step", "run.close"]},
                    "run": _HEX64, "seq": _UINT, "sig": _B64,
                    "signer": {"type": "string", "description": "Ed25519 note verifier key"},
                    "v": {"const": 1},
                },
            },
            "AddReply": {
                "type": "object", "required": ["index", "leaf_hash", "checkpoint",
                                               "inclusion_proof"],
                "properties": {
                    "index": _UINT, "leaf_hash": _B64,
                    "checkpoint": {"type": "string", "description": "signed note"},
                    "inclusion_proof": {"type": "array", "items": _B64},
                    "beacon_checkpoint": {"type": "string", "description": (
                        "run.open only: the signed checkpoint of size index + 1")},
                },
            },
            "InclusionProof": {"type": "object", "required": ["index", "size", "hashes"],
                               "properties": {"index": _UINT, "size": _UINT,
                                              "hashes": {"type": "array", "items": _B64}}},
            "ConsistencyProof": {"type": "object", "required": ["from", "to", "hashes"],
                                 "properties": {"from": _UINT, "to": _UINT,
                                                "hashes": {"type": "array", "items": _B64}}},
            "Entries": {"type": "object", "required": ["start", "entries"],
                        "properties": {"start": _UINT, "end": _UINT,
                                       "entries": {"type": "array", "items": _B64}}},
            "Run": {"type": "object", "required": ["run", "indexes"],
                    "properties": {"run": _HEX64, "indexes": {"type": "array", "items": _UINT}}},
            "Health": {"type": "object", "required": ["status", "origin", "size"],
                       "properties": {
                           "status": {"enum": ["ok", "storage_failed"]},
                           "origin": {"type": "string"},
                           "buffered_bytes": {**_UINT, "description": "request bodies "
                                              "being received or parsed"},
                           "error": {"type": "string"}, "detail": {"type": "string"},
                           "hint": {"type": "string"},
                           "size": _UINT,
                           "pending": {**_UINT, "description": "statements waiting"},
                           "flushes": _UINT, "flushed": _UINT,
                           "flush_seconds": {"type": "number"},
                           "witnessing": {"$ref": "#/components/schemas/Witnessing"}}},
            "Witnessing": {
                "type": "object", "description": "present when witnesses are configured",
                "properties": {
                    "quorum": _UINT,
                    "rule": {"type": "string", "description": (
                        "the rule a published checkpoint meets: k of n witnesses, or a "
                        "tlog-policy file's quorum (serve --policy)")},
                    "published_size": {"type": ["integer", "null"], "description": (
                        "size of the checkpoint GET /checkpoint serves")},
                    "rounds": _UINT,
                    "publish_ms": {"type": "object", "description": (
                        "flush -> witnessed publication: count, p50, p99, max")},
                    "witnesses": {"type": "array", "items": {
                        "type": "object", "properties": {
                            "url": {"type": "string"}, "key": {"type": "string"},
                            "size": _UINT, "cosigned": _UINT, "failures": _UINT,
                            "last_error": {"type": "string"},
                            "in_flight": {"type": "boolean"}}}},
                },
            },
            "Error": {
                "type": "object", "required": ["error", "detail"],
                "properties": {
                    "error": {"type": "string", "description": "machine-readable code"},
                    "detail": {"type": "string", "description": "what went wrong"},
                    "hint": {"type": "string", "description": "what to do about it"},
                    "statement": {"type": "integer",
                                  "description": "add-batch: position of the failing element"},
                    "index": {"type": "integer",
                              "description": "duplicate: where the statement already is"},
                },
            },
        }},
    }
