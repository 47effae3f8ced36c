"""audit: see docs/design.md for the package map."""
