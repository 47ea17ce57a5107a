"""Only the optional native dataset hasher (prover/_native.c, OpenSSL's SHA-256); all
other metadata is in setup.cfg. A machine without OpenSSL's headers (Debian libssl-dev)
or a C compiler installs potd without it: the pure-Python path hashes the same bytes."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("prover._native", ["prover/_native.c"], libraries=["crypto"],
                             define_macros=[("OPENSSL_API_COMPAT", "0x10100000L")],
                             optional=True)])
