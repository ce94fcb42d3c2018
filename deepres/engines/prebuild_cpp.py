"""``python -m deepres.engines.prebuild_cpp``: build the C++ CPU engine ahead of its first use.

Prints where the cached build is and how long it took; exits with 1 and one line on stderr
saying why where it cannot be built (see :mod:`deepres.engines.cpp_build`). A module of its own
so that ``python -m`` runs it without the package having imported it first.
"""

from deepres.engines.cpp_build import main

if __name__ == "__main__":
    raise SystemExit(main())
