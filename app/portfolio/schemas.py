"""The portfolio views' shapes: what dashboards poll, in the OpenAPI document too. Rates are
decimal strings of four places (`"0.0523"`), null when their denominator is zero; money is
the scope's currency."""

from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Rate = str | None


class LoansAndPrincipal(BaseModel):
    count: int
    principal_outstanding: str


class BucketPosition(LoansAndPrincipal):
    label: str = Field(description="The M0-M3+ label of the bucket")


class DelinquencyRate(BaseModel):
    by_count: Rate
    by_balance: Rate


class DelinquencyRates(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    past_30: DelinquencyRate = Field(alias="30_plus")
    past_90: DelinquencyRate = Field(alias="90_plus")


class Collected(BaseModel):
    today: str
    month_to_date: str


class SummaryRead(BaseModel):
    as_of: date | None = Field(description="The last closed business date")
    today: date
    currency: str
    merchant_id: str | None
    product_code: str | None
    loans: LoansAndPrincipal = Field(description="The open book")
    by_status: dict[str, LoansAndPrincipal]
    by_bucket: dict[str, BucketPosition] = Field(description="Open loans only")
    delinquency_rate: DelinquencyRates
    open_flags: dict[str, int] = Field(description="Open risk flags by code")
    collected: Collected


class RollCell(LoansAndPrincipal):
    rate: Rate = Field(description="Share of the row's loans that moved to this bucket")


class RollRatesRead(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    from_date: date | None = Field(
        alias="from", description="null by default until a second close: nothing rolled yet"
    )
    to_date: date | None = Field(alias="to", description="null by default before any close")
    currency: str
    matrix: dict[str, dict[str, RollCell]] = Field(description="From bucket, to bucket")


class VintagePoint(BaseModel):
    months_on_book: int
    ever_30_plus_rate: Rate
    ever_30_plus_balance_rate: Rate


class Vintage(BaseModel):
    origination_month: str = Field(examples=["2026-01"])
    loans: int
    principal: str
    curve: list[VintagePoint]


class VintagesRead(BaseModel):
    as_of: date | None = Field(description="The business date, null before the first close")
    currency: str
    vintages: list[Vintage]


class CohortRate(BaseModel):
    rate: Rate
    loans: int
    cohort: int


class RollFromCurrent(BaseModel):
    rate: Rate
    loans: int
    base: int


class Segment(BaseModel):
    segment: str = Field(description="A merchant id, a product code or an origination month")
    loans: int
    principal_outstanding: str
    fpd_10: CohortRate
    fpd_30: CohortRate
    current_to_30: RollFromCurrent
    dpd_30_plus_rate: Rate
    dpd_90_plus_rate: Rate


class SegmentsRead(BaseModel):
    as_of: date | None = Field(description="The last close, null before the first")
    by: str
    currency: str
    segments: list[Segment]


class AlertRead(BaseModel):
    id: str
    as_of: date
    dimension: str
    segment: str
    currency: str
    metric: str
    value: str = Field(description="the segment's rate at this close")
    baseline: str = Field(description="its mean over the trailing closes")
    multiple: str = Field(description="the threshold crossed: alert_multiple, in force then")
    ratio: str | None = Field(description="value / baseline; null when the baseline is 0")
    loans: int = Field(description="the rate's denominator")
    details: dict[str, Any]
