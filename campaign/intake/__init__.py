"""Taking in what the product team feeds: CSV and JSON Lines readers, accounts and devices, email addresses, the
suppression list."""
