"""A pickle payload that runs code when it is unpickled, for the safe-loading tests."""
from __future__ import annotations

import os


class RunsCodeOnLoad:
    """Unpickling this runs ``touch marker``: a test that finds ``marker`` missing proves nothing ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
