"""The cutoff: the flip and its rollback, the settings service client, approval, and the scheduler that runs each
step when due."""
