"""Pictures, from arrays to arrays: framing a photo (:mod:`.geometry`), panels (:mod:`.panels`), one image's
figures (:mod:`.figures`) and the bytes of a figure (:mod:`.encode`).

Nothing is imported here: OpenCV and Pillow are imported by the modules that use them.
"""
