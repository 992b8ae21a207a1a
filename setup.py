"""The compiled AES-SIV (vpncrypt/_siv.c) and the batch path around it
(vpncrypt/_batch.c), built against the system's libcrypto.

Everything else about the package is in pyproject.toml. The extension is
optional: where it does not build (no compiler, no OpenSSL headers), pip
installs vpncrypt without it and the daemon runs cryptography's AESSIV.
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
    ],
)
