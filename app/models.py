"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from app.api.idempotency import IdempotencyRecord
from app.api_keys.models import ApiKey
from app.borrowers.models import Borrower
from app.close.models import CloseRun, FeeReplayDue
from app.db import Base
from app.events.models import Event
from app.gateways.models import FailedDebit, Gateway, InboundNotification
from app.ledger.models import LedgerTransaction
from app.loans.models import Loan, LoanInstallment
from app.merchants.models import Merchant
from app.payments.models import Payment, PaymentAllocation
from app.portfolio.models import (
    LoanSnapshot,
    LoanSnapshotDay,
    PortfolioCollection,
    PortfolioDelta,
    PortfolioFlagCount,
    PortfolioPosition,
    RollRate,
    RollRatePair,
    SegmentAlert,
    SegmentCell,
    SegmentMetric,
    VintageCount,
)
from app.products.models import Product
from app.promises.models import Promise
from app.relief.models import Restructure
from app.risk.models import RiskFlag, RiskRulesVersion, RiskRun
from app.webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookSubscriptionPeriod,
)

__all__ = [
    "ApiKey",
    "Base",
    "Borrower",
    "CloseRun",
    "Event",
    "FailedDebit",
    "FeeReplayDue",
    "Gateway",
    "IdempotencyRecord",
    "InboundNotification",
    "LedgerTransaction",
    "Loan",
    "LoanInstallment",
    "LoanSnapshot",
    "LoanSnapshotDay",
    "Merchant",
    "Payment",
    "PaymentAllocation",
    "PortfolioCollection",
    "PortfolioDelta",
    "PortfolioFlagCount",
    "PortfolioPosition",
    "Product",
    "Promise",
    "Restructure",
    "RiskFlag",
    "RiskRulesVersion",
    "RiskRun",
    "RollRate",
    "RollRatePair",
    "SegmentAlert",
    "SegmentCell",
    "SegmentMetric",
    "VintageCount",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookSubscriptionPeriod",
]
