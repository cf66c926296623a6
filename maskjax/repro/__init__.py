"""The reproduction ledger: ``maskjax repro NAME`` runs a table of config rows into docs/results/.

:mod:`.ledger` runs and renders tables; every other module here defines tables and registers
them with :func:`~maskjax.repro.ledger.register_table` (found by :func:`~maskjax.repro.ledger.tables`,
together with tables of other packages declared under the ``maskjax.tables`` entry-point group).
"""

from maskjax.repro.ledger import Row, Table, main, register_table, run_table, tables

__all__ = ["Row", "Table", "main", "register_table", "run_table", "tables"]
