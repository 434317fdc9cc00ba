"""A container health check with nothing but Python: ``python -m mieruka.probe URL [TIMEOUT_S]``.

The image is slim (no curl or wget), so compose's ``healthcheck`` runs this. Exit 0 when ``URL``
answers 2xx within the time limit (default 3 s), 1 otherwise with one line saying why on stderr;
2 for a bad argument. Only http:// URLs: a probe checks a server in its own container.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

USAGE = "usage: python -m mieruka.probe http://HOST:PORT/PATH [TIMEOUT_S]"


def probe(url: str, timeout_s: float = 3.0) -> str | None:
    """None when ``url`` answers 2xx within ``timeout_s``, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            status = int(r.status)
    except urllib.error.HTTPError as e:
        return f"{url} answered HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{url} cannot be reached: {reason}"
    return None if 200 <= status < 300 else f"{url} answered HTTP {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or not args[0].startswith("http://"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        timeout_s = float(args[1]) if len(args) == 2 else 3.0
    except ValueError:
        timeout_s = -1.0
    if not timeout_s > 0:
        print(f"TIMEOUT_S must be a positive number of seconds, got {args[1]!r}; {USAGE}", file=sys.stderr)
        return 2
    why = probe(args[0], timeout_s)
    if why is not None:
        print(why, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
