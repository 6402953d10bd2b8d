"""indexes for series and history queries; runs.samples_pruned_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

- measurements(device_id, case_id, run_id) replaces measurements(device_id, case_id): a (device, case)
  series joins to its runs from the index alone (trends, regress --history, compare).
- measurements(run_id) is dropped: the unique (run_id, device_id, case_id) index starts with run_id.
- runs.samples_pruned_at records when `harness results prune` dropped a run's raw samples, so "no samples"
  reads as "pruned" rather than "never recorded".

Indexes already in 0001 that the read side relies on: runs(started_at), measurements(status),
run_devices(device_id), cases(hash).
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite adds a nullable column in place (no table copy); batch mode only copies when it must.
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('samples_pruned_at', sa.DateTime(), nullable=True))
    op.create_index('ix_measurements_device_case_run', 'measurements', ['device_id', 'case_id', 'run_id'],
                    unique=False)
    op.drop_index('ix_measurements_device_case', table_name='measurements')
    op.drop_index('ix_measurements_run_id', table_name='measurements')


def downgrade() -> None:
    op.create_index('ix_measurements_run_id', 'measurements', ['run_id'], unique=False)
    op.create_index('ix_measurements_device_case', 'measurements', ['device_id', 'case_id'], unique=False)
    op.drop_index('ix_measurements_device_case_run', table_name='measurements')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('samples_pruned_at')
