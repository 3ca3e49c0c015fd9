"""How commands become bytes for Redis: redis-py's own hiredis serializer, minus its per-argument
Python work.

redis-py (with hiredis) encodes every argument in Python — an `Encoder.encode` call and two
generator steps each — before `hiredis.pack_command` packs them. Our pipelines carry ~20
arguments per round trip (Lua scripts with their keys and arguments), so that Python loop cost
more than sending and reading the round trip itself (callgrind, 3 commands of 26 arguments:
~225 k instructions to pack, ~97 k for a whole round trip on a bare socket). `hiredis.pack_command`
encodes str (UTF-8, strict), bytes, memoryview, int and float itself, to the same bytes (tests/
test_redispack.py compares the two for each kind). Anything else — a bool, None, a multi-word
command name such as "CLIENT SETINFO" — goes to redis-py's serializer unchanged, so its
errors (DataError) and splitting stay redis-py's.

The packer plugs in through redis-py's own `command_packer` connection argument; the cluster
client, which accepts no such argument, gets it through `connection_class`.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

# redis-py's defaults for the bytes it writes: UTF-8, strict; 6000 is its buffer cut-off.
_ENCODER = Encoder("utf-8", "strict", False)
_BUFFER_CUTOFF = 6000


class Packer:
    """`pack(*args) -> list[bytes]`, the interface redis-py's connections call."""

    def __init__(self) -> None:
        self._library = PythonRespSerializer(_BUFFER_CUTOFF, _ENCODER.encode)

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if (" " in name) if isinstance(name, str) else (b" " in name):
            return self._library.pack(*args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # bool, None, ...: redis-py's DataError, as without this packer
            return self._library.pack(*args)


PACKER = Packer()  # stateless: one for every connection


def packed(connection_class: type[redis.Connection]) -> type[redis.Connection]:
    """`connection_class` whose connections use PACKER (for the cluster client)."""

    class PackedConnection(connection_class):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("command_packer", PACKER)
            super().__init__(*args, **kwargs)

    PackedConnection.__name__ = PackedConnection.__qualname__ = f"Packed{connection_class.__name__}"
    return PackedConnection


__all__ = ["PACKER", "Packer", "packed"]
