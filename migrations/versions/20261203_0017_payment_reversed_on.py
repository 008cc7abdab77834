"""payment.reversed_on: the business date a reversal counts from

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 17:30:00
"""

from collections.abc import Sequence
from datetime import UTC
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import context, op


revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reversed_on', sa.Date(), nullable=True))
    # A reversal recorded before this revision counts from the business date it was recorded
    # on: its instant's date in the lender's zone, as the code dates a reversal from now on.
    # Until the thirty-ninth session this was the UTC date, a day late for a reversal recorded
    # before 08:00 in Shanghai, which then left the payment_reversal window of the day before
    # (a tester's).
    zone = context.config.attributes.get('timezone', 'Asia/Shanghai')
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute(sa.text("UPDATE payment SET reversed_on = (reversed_at AT TIME ZONE :zone)::date "
                           "WHERE reversed_at IS NOT NULL").bindparams(zone=zone))
        return
    # SQLite knows no zones: its instants are naive UTC text, converted here.
    payment = sa.table('payment', sa.column('id', sa.String), sa.column('reversed_at', sa.DateTime),
                       sa.column('reversed_on', sa.Date))
    reversed_on = [
        {'payment_id': id_, 'on': at.replace(tzinfo=UTC).astimezone(ZoneInfo(zone)).date()}
        for id_, at in bind.execute(sa.select(payment.c.id, payment.c.reversed_at)
                                    .where(payment.c.reversed_at.is_not(None)))
    ]
    if reversed_on:
        bind.execute(payment.update().where(payment.c.id == sa.bindparam('payment_id'))
                     .values(reversed_on=sa.bindparam('on')), reversed_on)


def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_column('reversed_on')
