"""Data: a worker's own datasets (``datasets``: the rows it serves, the one ``.npz``
reader, the built-in toy set), data sources and their readers (``readers``, ``splits``,
``idx``, ``mnist``, ``cifar``, ``tabular``), partitions among data owners
(``partition``), and the step that writes one train and one test ``.npz`` per owner
(``prepare``). Import from the modules: ``from splitnn.data.prepare import prepare``.
"""
