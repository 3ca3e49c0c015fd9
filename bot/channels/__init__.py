"""Thin translators between platforms and the engine: parse, hand over, render."""
