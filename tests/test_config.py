"""Settings: wrong or missing values stop start-up with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings, SettingsError

REPO = Path(__file__).resolve().parents[1]
KEY = "k" * 32


def test_defaults_start_without_any_setting():
    s = Settings.from_env({})
    assert s.embedded_redis and s.secret_is_ephemeral and s.municipality == "kyoto"
    assert not s.line_enabled
    assert s.line_dispatch_threads == 16  # answers/s per process ≤ this / LINE's latency


@pytest.mark.parametrize(("env", "variable"), [
    ({"REDIS_URL": "redis://localhost"}, "BOT_SECRET_KEY"),
    ({"BOT_SECRET_KEY": "short"}, "BOT_SECRET_KEY"),
    ({"REDIS_URL": "http://x", "BOT_SECRET_KEY": KEY}, "REDIS_URL"),
    ({"REDIS_URL": "nonsense", "BOT_SECRET_KEY": KEY}, "REDIS_URL"),
    ({"SESSION_TTL_SECONDS": "soon"}, "SESSION_TTL_SECONDS"),
    ({"SESSION_TTL_SECONDS": "5"}, "SESSION_TTL_SECONDS"),
    ({"LINE_CHANNEL_SECRET": "abc"}, "LINE_CHANNEL_ACCESS_TOKEN"),
    ({"LINE_API_BASE_URL": "ftp://x"}, "LINE_API_BASE_URL"),
    ({"MUNICIPALITY": "../etc"}, "MUNICIPALITY"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
    ({"STREAM_SHARDS": "0"}, "STREAM_SHARDS"),
    ({"LINE_DISPATCH_THREADS": "0"}, "LINE_DISPATCH_THREADS"),
    ({"LINE_DISPATCH_THREADS": "65"}, "LINE_DISPATCH_THREADS"),
    ({"REDIS_WAIT_REPLICAS": "many"}, "REDIS_WAIT_REPLICAS"),
    ({"REDIS_WAIT_MS": "0"}, "REDIS_WAIT_MS"),
    ({"REDIS_WAIT_MS": "2000"}, "REDIS_WAIT_MS"),   # past the 2 s read timeout
    ({"REDIS_WAIT_TIMEOUT": "shrug"}, "REDIS_WAIT_TIMEOUT"),
])
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


def test_cluster_and_durability_settings():
    s = Settings.from_env({})
    assert s.redis_cluster is None and s.redis_wait_replicas is None and not s.redis_wait_refuse
    s = Settings.from_env({"REDIS_CLUSTER": "1", "STREAM_SHARDS": "8", "REDIS_WAIT_REPLICAS": "2",
                           "REDIS_WAIT_MS": "50", "REDIS_WAIT_TIMEOUT": "refuse"})
    assert (s.redis_cluster, s.stream_shards, s.redis_wait_replicas, s.redis_wait_ms,
            s.redis_wait_refuse) == (True, 8, 2, 50, True)
    assert Settings.from_env({"REDIS_CLUSTER": "0"}).redis_cluster is False


def test_server_exits_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1", "BOT_SECRET_KEY": "x"}
    proc = subprocess.run([sys.executable, "-c", "import server; server.app"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["tsunagu: configuration error: BOT_SECRET_KEY: must be at least "
                     "32 characters"]


def test_unknown_pack_stops_start_up():
    env = {"PATH": "/usr/bin:/bin", "MUNICIPALITY": "atlantis"}
    proc = subprocess.run([sys.executable, "-c", "import server; server.app"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "atlantis" in proc.stderr and "no such content pack" in proc.stderr
