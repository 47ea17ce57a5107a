"""Only the optional native extensions; all other metadata is in setup.cfg.

``prover._native`` (the dataset hasher, OpenSSL's SHA-256), ``ledger._treehash`` (the
log flush's tree hashing and proofs, OpenSSL's SHA-256) and ``ledger._fastpath``
(statement parsing with OpenSSL's SHA-256, Ed25519 verification with libsodium). A
machine without their headers (Debian libssl-dev, libsodium-dev) or a C compiler installs
potd without them: the pure-Python paths compute the same results."""

from setuptools import Extension, setup

COMPAT = [("OPENSSL_API_COMPAT", "0x10100000L")]

setup(ext_modules=[
    Extension("prover._native", ["prover/_native.c"], libraries=["crypto"],
              define_macros=COMPAT, optional=True),
    Extension("ledger._treehash", ["ledger/_treehash.c"], libraries=["crypto"],
              optional=True),
    Extension("ledger._fastpath", ["ledger/_fastpath.c", "ledger/_fastpath_json.c"],
              depends=["ledger/_fastpath.h"], libraries=["crypto", "sodium"],
              define_macros=COMPAT, optional=True),
])
