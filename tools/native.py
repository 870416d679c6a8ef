"""Build the router's compiled modules (``controller.adapters.router.native``) unless built already:
``make native``. Without a C compiler it says so and the router runs its Python; a failed build
exits non-zero with the compiler's last lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from controller.adapters.router import native


def main() -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        print("router native build skipped: no C compiler (the router runs its Python)")
        return
    try:
        d = native.build()
    except subprocess.CalledProcessError as exc:
        tail = exc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        sys.exit("router native build failed:\n" + "\n".join(tail))
    except (subprocess.TimeoutExpired, OSError) as exc:
        sys.exit(f"router native build failed: {exc}")
    print(f"router native build: {d}")


if __name__ == "__main__":
    main()
