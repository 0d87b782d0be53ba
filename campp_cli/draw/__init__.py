"""Pictures from arrays: framing, panels, one image's figures."""
