"""Interactive widgets (ipywidgets 8): builders that return objects exposing their controls.

Each works headlessly (``.value = …``, ``.click()``) and displays itself in Jupyter.
"""

from .console import QMPConsole
from .explorer import BitmapExplorer
from .syncmode_lab import SyncModeLab
from .transaction_lab import TransactionLab

__all__ = ["BitmapExplorer", "QMPConsole", "SyncModeLab", "TransactionLab"]
