"""Settings: pydantic-settings models read from defaults < airflow.cfg < environment."""

from .loader import ConfigError, Settings, describe_settings, load_settings, redact_url
from .models import BatchSettings, CoreSettings, EcsSettings

__all__ = [
    "BatchSettings",
    "ConfigError",
    "CoreSettings",
    "EcsSettings",
    "Settings",
    "describe_settings",
    "load_settings",
    "redact_url",
]
