"""What a caller may read: the connections and companies its token is limited to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccessScope:
    """Limits on the rows a caller can see. `None` means no limit on that axis."""

    connection_ids: frozenset[str] | None = None
    company_ids: frozenset[str] | None = None

    @classmethod
    def unrestricted(cls) -> AccessScope:
        """Every connection and company (admin tokens, the CLI, background jobs)."""
        return cls()

    def allows_company(self, company_id: str) -> bool:
        """Whether a company id is inside the scope's company limit."""
        return self.company_ids is None or company_id in self.company_ids
