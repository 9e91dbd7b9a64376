"""``im conflict review``: pending conflicts in a Textual app (SPEC §6, §12).

``review`` is what the app does to the database (no Textual in it); ``app`` is the thin App;
each widget has its own module; ``im.tcss`` is the one stylesheet. Only ``im.cli.conflict``
imports this package, and only when the command runs.
"""
