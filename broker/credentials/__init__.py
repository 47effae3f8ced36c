"""Credential kinds beyond a static string (DESIGN.md §11): AWS SigV4
re-signing, OAuth2 and GitHub App token minting, captured tokens."""
