"""The evidence: status, the per-account export, one person's story, the audit log, the HTML report."""
