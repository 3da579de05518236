"""Data preparation for split learning: dataset readers (``readers``), partitions among data
owners (``partition``), and the step that writes one train and one test ``.npz`` per owner
(``prepare``). The functions named like their modules are imported from those modules:
``from splitnn.data.prepare import prepare``, ``from splitnn.data.partition import partition``.
"""

from splitnn.data.readers import Dataset, Split, load_source, parse_source
from splitnn.errors import DataError

__all__ = ["DataError", "Dataset", "Split", "load_source", "parse_source"]
