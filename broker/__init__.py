"""keybroker core: pure logic with no mitmproxy imports (see DESIGN.md §10)."""

__version__ = "0.1.0"
