"""Moving rows through the stages: the run (:mod:`.run`), its options and events, the engines."""
