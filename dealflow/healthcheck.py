"""`python -m dealflow.healthcheck URL [--contains TEXT]`: a container healthcheck.

Exit 0 when URL answers 2xx within the timeout (and, with `--contains`, its
body holds TEXT), else 1 with one line saying what it got. The production image
is python:slim, which has no curl or wget; this needs nothing but the standard
library, so it starts fast enough to run every few seconds.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def check(url: str, contains: str | None = None, timeout: float = 3.0) -> str | None:
    """None when healthy, else what is wrong."""
    # Straight to the URL: a proxy set for the container's outbound calls is not
    # the way to its own port.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        return f"{url} answered {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{url} did not answer: {reason}"
    if contains is not None and contains not in body:
        return f"{url} answered without {contains!r}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dealflow.healthcheck", description=__doc__)
    parser.add_argument("url", help="http:// URL to GET")
    parser.add_argument("--contains", help="text the body must contain")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"{args.url!r} is not an http(s) URL")
    problem = check(args.url, args.contains, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
