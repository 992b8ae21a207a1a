"""The compiled AES-SIV (vpncrypt/_siv.c) and the batch path around it
(vpncrypt/_batch.c), built against the system's libcrypto; and the compiled
TUN offload splitters and write coalescer (vpncrypt/_offload.c), which need
no library.

Everything else about the package is in pyproject.toml. Both extensions are
optional: where one does not build (no compiler, no OpenSSL headers), pip
installs vpncrypt without it and the daemon runs the Python it replaces
(cryptography's AESSIV, vpncrypt/tun/offload.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vpncrypt._siv",
            sources=["vpncrypt/_siv.c", "vpncrypt/_batch.c", "vpncrypt/_aesni.c"],
            depends=["vpncrypt/_siv.h"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        ),
        Extension(
            "vpncrypt._offload",
            sources=["vpncrypt/_offload.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        ),
    ],
)
