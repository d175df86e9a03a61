"""campaign: retire a user-facing setting honestly and safely, at scale."""

from campaign.config import Config, load_config
from campaign.errors import CampaignError, InputError, UsageError

__all__ = ["CampaignError", "Config", "InputError", "UsageError", "load_config"]
