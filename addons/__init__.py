"""The mitmproxy shell around the keybroker core."""
