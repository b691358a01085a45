"""The compiled packet path (ips/fast/_fastpath.pyx), the compiled parsers of TLS and HTTP
(ips/fast/_streamparse.pyx) and of DNS (ips/fast/_dnsparse.pyx), and the compiled NFQUEUE
loop (ips/io/_nfqdrain.pyx), built by Cython at `pip install -e .`.

Everything else about the package is in pyproject.toml. Without a C compiler the build of the
extension fails: set IPSCTL_NO_EXTENSION=1 to install without it (the engine then runs in
pure Python and says so once).
"""

import os

from setuptools import setup

ext_modules = []
if os.environ.get("IPSCTL_NO_EXTENSION", "") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            "ips/fast/_fastpath.pyx",
            "ips/fast/_streamparse.pyx",
            "ips/fast/_dnsparse.pyx",
            "ips/io/_nfqdrain.pyx",
        ],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )

setup(ext_modules=ext_modules)
