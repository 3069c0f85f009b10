"""What runs on the drill's sandbox target: the app (``app``: its HTTP side in ``server``, its
data side in ``data``) and the process manager it runs under (``procman``, ``processes``).

Stdlib-only scripts for ``python3`` >= 3.8, copied into the target's ``bin/`` and run there
beside each other; the sandbox builder imports ``data`` to write the app's export.
"""
