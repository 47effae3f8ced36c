"""Secret backends behind one Protocol (DESIGN.md §3, §10, §14): the contract
in :mod:`~broker.backends.base`, one module per store, and
:mod:`~broker.backends.registry` to build them from a policy."""
