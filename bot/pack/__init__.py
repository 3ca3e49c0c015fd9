"""Content packs: the windows, hotlines and sentences of one municipality, as validated data."""

from bot.pack.loader import Pack, PackError, load_pack

__all__ = ["Pack", "PackError", "load_pack"]
