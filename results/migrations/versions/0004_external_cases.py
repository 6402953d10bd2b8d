"""cases.name; the attention keys of a case nullable

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10

Benchmarks imported from pyperf and pytest-benchmark files are cases of `variant: external` identified
by their `name` alone: they have no precision, backend, scope, sequence length, batch, heads, head_dim or
input distribution, and storing a made-up one would fake a number. Those columns become nullable; every
attention case keeps them filled as before. SQLite rebuilds the table (batch mode): ids are kept.
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

ATTENTION_KEYS = (('precision', sa.String(length=16)), ('backend', sa.String(length=32)),
                  ('scope', sa.String(length=16)), ('seq_len', sa.Integer()), ('batch', sa.Integer()),
                  ('heads', sa.Integer()), ('head_dim', sa.Integer()), ('inputs', sa.String(length=16)))


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=500), nullable=True))
        for column, type_ in ATTENTION_KEYS:
            batch_op.alter_column(column, existing_type=type_, nullable=True)


def downgrade() -> None:
    # Imported (external) cases cannot exist without the columns' values: they go, with their measurements.
    op.execute("DELETE FROM samples WHERE measurement_id IN (SELECT m.id FROM measurements m JOIN cases c "
               "ON c.id = m.case_id WHERE c.variant = 'external')")
    op.execute("DELETE FROM measurements WHERE case_id IN (SELECT id FROM cases WHERE variant = 'external')")
    op.execute("DELETE FROM cases WHERE variant = 'external'")
    with op.batch_alter_table('cases', schema=None) as batch_op:
        for column, type_ in ATTENTION_KEYS:
            batch_op.alter_column(column, existing_type=type_, nullable=False)
        batch_op.drop_column('name')
