"""Run store (hash-named folders, atomic writes, resume) and experiment trackers."""

from lottery.tracking.atomic import load_json, load_torch, save_json, save_text, save_torch
from lottery.tracking.store import (
           HASH_EXCLUDED,
           HASH_NEUTRAL_DEFAULTS,
           RunStore,
           config_hash,
           hashable_config,
)

__all__ = ["HASH_EXCLUDED", "HASH_NEUTRAL_DEFAULTS", "RunStore", "config_hash", "hashable_config", "load_json", "load_torch", "save_json",
           "save_text", "save_torch"]
