"""The risk rules in force: the latest version stored by ``PUT /v1/risk/rules``, or the
defaults."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.risk.models import RiskRulesVersion
from app.risk.rules import STORED, RiskRules


async def current_rules(session: AsyncSession) -> tuple[int, RiskRules]:
    """The rules in force and their version (0: the defaults, never changed)."""
    latest = await session.scalar(
        select(RiskRulesVersion).order_by(RiskRulesVersion.version.desc()).limit(1)
    )
    if latest is None:
        return 0, RiskRules()
    return latest.version, RiskRules.model_validate(latest.rules, context=STORED)
