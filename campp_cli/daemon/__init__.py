"""``campp daemon``: one warm process per user that runs the callers' :class:`~campp_cli.run.run.Run` s.

A shell loop of ``campp classify -f photo.jpg`` pays, each call, for Python, torch and the model.  With a
daemon (``campp daemon start``) the call stays torch-free: it parses, checks and plans its run as always
(:class:`~campp_cli.run.run.Run` is torch-free until it executes), hands the planned run to the daemon over a
Unix socket, and prints the events the daemon sends back with its own printer.  The daemon executes the run
in the caller's folder, umask and environment, writing to the caller's stdout descriptor, with a model it
keeps loaded (:func:`campp_cli.models.loading.keep_models`), one call at a time.

- :mod:`.paths`: where the socket lives (a folder only the user can open), what identifies a build.
- :mod:`.wire`: the messages (length-prefixed pickles between two processes of one user).
- :mod:`.server`: the daemon.
- :mod:`.client`: the caller's side: hand a run over, or say why it runs here.
"""
