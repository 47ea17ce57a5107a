"""Only the optional native helpers (OpenSSL's SHA-256): the dataset hasher
(prover/_native.c) and the log flush's tree hashing and proofs (ledger/_treehash.c); all
other metadata is in setup.cfg. A machine without OpenSSL's headers (Debian libssl-dev)
or a C compiler installs potd without it: the pure-Python path hashes the same bytes."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("prover._native", ["prover/_native.c"], libraries=["crypto"],
                             define_macros=[("OPENSSL_API_COMPAT", "0x10100000L")],
                             optional=True),
                   Extension("ledger._treehash", ["ledger/_treehash.c"], libraries=["crypto"],
                             optional=True)])
