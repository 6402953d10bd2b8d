"""measurements.cpu_other and measurements.contended; runs.error

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

What else used the device's CPUs while a case was timed: `cpu_other` is the share (0..1) of the capacity of
the worker's CPUs that other processes used during the timed window, `contended` whether it passed
`measure.max_cpu_other`. Rows stored before this revision keep NULL in both: not measured, never zero.
`runs.error` says why a run ended interrupted or failed (the signal, the database error).
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite adds nullable columns in place (no table copy).
    with op.batch_alter_table('measurements', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cpu_other', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('contended', sa.Boolean(), nullable=True))
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('error')
    with op.batch_alter_table('measurements', schema=None) as batch_op:
        batch_op.drop_column('contended')
        batch_op.drop_column('cpu_other')
