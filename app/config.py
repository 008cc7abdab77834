"""Settings, read once from the environment (prefix ``LOANWATCH_``).

With nothing configured the service runs on the embedded default: a SQLite file in the working
folder and the scheduled work in-process. Nested groups use ``__``, e.g.
``LOANWATCH_CREDIT__INCOME_MULTIPLE=4``.
"""

from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CreditPolicy(BaseModel):
    """Initial credit limit: a multiple of declared monthly income, capped.

    See docs/credit-policy.md.
    """

    income_multiple: Decimal = Decimal(3)
    limit_without_income: Decimal = Decimal("3000.00")
    max_limit: Decimal = Decimal("50000.00")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOANWATCH_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = "sqlite+aiosqlite:///./loanwatch.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Business dates ("today", the nightly close) are reckoned in this zone.
    timezone: str = "Asia/Shanghai"
    default_currency: str = "CNY"
    credit: CreditPolicy = Field(default_factory=CreditPolicy)
    # Largest principal or payment the API accepts, in major units of any currency.
    max_amount: Decimal = Decimal("100000000")
    idempotency_ttl_hours: int = 48
    # An idempotency record still "in progress" after this long belongs to a crashed request.
    idempotency_lock_seconds: int = 60
    db_pool_size: int = 10
    # Scheduled work (nightly close, webhook dispatch) runs in the API process instead of on
    # Celery. Unset: in-process on SQLite (the embedded default), Celery on PostgreSQL.
    in_process_scheduler: bool | None = None
    log_level: str = "info"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_celery(self) -> bool:
        if self.in_process_scheduler is None:
            return not self.is_sqlite
        return not self.in_process_scheduler

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@lru_cache
def get_settings() -> Settings:
    return Settings()
