"""The keybroker mitmproxy addon.

``keybroker run`` embeds it; it also loads as a script::

    mitmdump -s addons/keybroker.py --set keybroker_config=config/policy.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __name__ != "addons.keybroker":  # loaded by mitmdump -s: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.hooks import KeyBroker


def _feed() -> Any:
    from rich.console import Console

    from broker.cli.console import Feed

    return Feed(Console(stderr=True))


__all__ = ["KeyBroker"]
addons = [KeyBroker(feed_factory=_feed)] if __name__ != "addons.keybroker" else []
