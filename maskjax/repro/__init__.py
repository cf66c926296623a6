"""The reproduction ledger: ``maskjax repro NAME`` runs a table of config rows into docs/results/.

:mod:`.ledger` runs and renders single-seed tables, :mod:`.seeded` multi-seed ones and :mod:`.command` is
``maskjax repro``; every other module here defines tables and registers
them with :func:`~maskjax.repro.ledger.register_table` (found by :func:`~maskjax.repro.ledger.tables`,
together with tables of other packages declared under the ``maskjax.tables`` entry-point group).
"""

from maskjax.repro.command import main, run_table
from maskjax.repro.ledger import Claim, Row, Table, register_table, tables

__all__ = ["Claim", "Row", "Table", "main", "register_table", "run_table", "tables"]
