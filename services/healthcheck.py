"""Container healthcheck: exit 0 when this container's mmrag service answers GET /ready with 200.

    python /app/healthcheck.py            # readiness: models and indexes loaded (the default)
    python /app/healthcheck.py /health    # liveness only

The port comes from the same settings `mmrag serve` reads (api.port from MMRAG_CONFIG or
MMRAG_API__PORT), so the check follows the service wherever it is configured to listen.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    from mmrag.settings import load_settings

    path = argv[1] if len(argv) > 1 else "/ready"
    api = load_settings().api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    if ":" in host:  # an IPv6 address goes in brackets in a URL
        host = f"[{host}]"
    url = f"http://{host}:{api.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 while loading, or after a failed load
        print(f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}", file=sys.stderr)
    except OSError as exc:  # refused, timed out: not listening (yet)
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
