"""What ``pytest --nndiag`` does, one job per module.

* :mod:`~nndiag._pytest.common`: names both the entry point and the rest share (light).
* :mod:`~nndiag._pytest.settings`: the options and ``[tool.nndiag]``, read once.
* :mod:`~nndiag._pytest.plan`: which subjects exist and what runs for each.
* :mod:`~nndiag._pytest.items`: the collection nodes, and running one check.
* :mod:`~nndiag._pytest.reporting`: results from reports, the JSON/HTML files, the table.
* :mod:`~nndiag._pytest.session`: the object in ``config.stash`` that holds them together.

This package's ``__init__`` imports nothing: :mod:`nndiag.plugin` loads ``common`` in every
pytest run, and the rest only under ``--nndiag``.
"""
