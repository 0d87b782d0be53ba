"""``campp daemon``: one warm process per user that runs the callers' command lines.

A shell loop of ``campp classify -f photo.jpg`` pays, each call, for Python, torch and the model.  With a
daemon (``campp daemon start``) the console script's first step (:mod:`campp_cli.cli.entry`) hands the
command line over a Unix socket before anything heavy is imported, click included, with its folder, umask,
environment, stdin, stdout and stderr; the daemon runs the same CLI (:func:`campp_cli.cli.main.run`) as the
caller's own process would, with a model it keeps loaded (:func:`campp_cli.models.loading.keep_models`),
one call at a time, and answers with the exit code.

- :mod:`.paths`: where the socket lives (a folder only the user can open), what identifies a build.
- :mod:`.wire`: the messages (length-prefixed pickles between two processes of one user).
- :mod:`.server`: the daemon.
- :mod:`.client`: the caller's side: forward a command line, or say why it runs here; start, ping, stop.
"""
