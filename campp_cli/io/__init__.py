"""Bytes in and out, no maths: photos decoded (:mod:`.decode`), crash-safe writes (:mod:`.durable`,
:mod:`.tempfiles`), -f's inputs (:mod:`.inputs`), output names (:mod:`.names`) and ``--jsonl`` (:mod:`.jsonl`).

Nothing is imported here: ``campp --help`` and the argument checks import :mod:`.inputs`, :mod:`.names` and
:mod:`.jsonl`, which need neither torch, OpenCV nor NumPy.
"""
