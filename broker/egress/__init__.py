"""Egress control: where a tenant may connect at all (DESIGN.md §12)."""
