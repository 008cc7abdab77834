"""Loanwatch: loan servicing with early-warning alerts for POS installment loans."""
