"""Defaults shared by the CLI and the library, importable without torch or OpenCV."""

#: Largest image (width x height) decoded by default: bigger ones are refused
#: from their header, before any pixel is allocated.
DEFAULT_MAX_PIXELS = 100_000_000
#: Pillow refuses anything above twice its own limit (2 x 89,478,485) whatever we ask.
MAX_PIXELS_CEILING = 178_956_970

#: Panels are drawn at the resolution of the central square of the photo,
#: shrunk to at most this side ...
DEFAULT_MAX_SIDE = 1024
#: ... and enlarged to at least this one, so tiny inputs stay readable.
MIN_PANEL_SIDE = 224

#: Default output folder and comparison file name, as in the paper's classify.py.
DEFAULT_OUTPUT_DIR = "output"
DEFAULT_OUTPUT = "output.jpeg"

#: --format: the image formats of the output figures, by the file suffixes that name them (first: the
#: one --format adds).
FORMATS = {"jpeg": (".jpeg", ".jpg"), "png": (".png",)}

#: --report: the page is rewritten during a run every this many images (or every tenth done so far, if more).
DEFAULT_REPORT_EVERY = 200

#: --display: what the panels show.
DISPLAYS = {"crop": "the square the model saw (as the paper)",
            "full": "the whole photo, the maps over the part the model saw, the rest dimmed"}

#: The heatmap's weight in the overlays (--alpha).
DEFAULT_ALPHA = 0.5
