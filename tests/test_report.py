"""The staff report page: behind its token, charts drawn on the server, no personal data."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace

import pytest

from bot import figures
from bot.service import utcnow
from server import create_app
from tests.test_figures import TYPED, script_web

TOKEN = "report-token-" + "r" * 24


@pytest.fixture
def pack():
    """The pack the test app serves (the default one)."""
    from bot.pack import load_pack
    from bot.pack.loader import default_pack_name

    return load_pack(default_pack_name())

@pytest.fixture
def report_app(settings, services):
    s = replace(settings, staff_report_token=TOKEN)
    services.settings = s
    app = create_app(s, services=services)
    app.config["TESTING"] = True
    return app


def month() -> str:
    return figures.tokyo_day(utcnow())[0][:7]


def pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_is_off_without_a_token(client):
    assert client.get("/staff/report").status_code == 404
    assert client.get("/staff/report.csv").status_code == 404


def test_report_refuses_a_missing_or_wrong_token(report_app):
    http = report_app.test_client()
    assert http.get("/staff/report").status_code == 401
    assert http.get("/staff/report?token=wrong").status_code == 401
    assert http.get("/staff/report", headers={"Authorization": "Bearer " + TOKEN[:-1]}
                    ).status_code == 401
    assert http.get("/staff/report.csv", headers={"Authorization": "Basic " + TOKEN}
                    ).status_code == 401
    assert http.get(f"/staff/report?token={TOKEN}&month=2026-13").status_code == 400
    assert http.get(f"/staff/report?token={TOKEN}&month=26-1").status_code == 400


def test_report_page_shows_the_month_as_charts(report_app, pack, redis_client, key_prefix):
    script_web(report_app, pack)
    http = report_app.test_client()
    resp = http.get(f"/staff/report?month={month()}",
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    images = pngs(html)
    assert len(images) >= 10
    from matplotlib import image

    for raw in images:
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = image.imread(io.BytesIO(raw), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 500
        assert pixels.std() > 0.01  # something is drawn, not a blank canvas
    # Small cells (every count here is below 5) are shown with the pack's words.
    assert pack.msg("figures.small_cell", "ja") in html
    # No pseudonym, no typed text on the page.
    pseudonyms = {k.decode().split("{")[1].split("}")[0]
                  for k in redis_client.scan_iter(match=f"{key_prefix}:*:session")}
    assert pseudonyms
    for p in pseudonyms:
        assert p[:16] not in html
    assert TYPED not in html and "死にたい" not in html
    # A screenshot of the page's first chart, for people reviewing the change.
    out = report_app.config.get("SCREENSHOT_DIR")
    if out:
        (out / "report-daily.png").write_bytes(images[0])


def test_report_csv_download_is_published_or_internal(report_app, pack):
    script_web(report_app, pack)
    http = report_app.test_client()
    small = pack.msg("figures.small_cell", "ja")
    published = http.get(f"/staff/report.csv?month={month()}&publish=1&token={TOKEN}")
    assert published.status_code == 200
    assert published.headers["Content-Type"].startswith("text/csv")
    lines = published.get_data(as_text=True).splitlines()
    assert lines[0] == "date,measure,key,count"
    counts = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert small in counts
    assert all(c == small or int(c) >= figures.SMALL_CELL for c in counts)
    internal = http.get(f"/staff/report.csv?month={month()}&token={TOKEN}")
    text = internal.get_data(as_text=True)
    assert ",contacts,web,4" in text and TYPED not in text


def test_empty_month_renders(report_app):
    resp = report_app.test_client().get(f"/staff/report?month=2001-02&token={TOKEN}")
    assert resp.status_code == 200 and len(pngs(resp.get_data(as_text=True))) >= 10


def test_write_screenshots_for_review(report_app, pack, tmp_path):
    """Not an assertion of looks: writes the charts where a reviewer can open them."""
    script_web(report_app, pack)
    html = report_app.test_client().get(f"/staff/report?token={TOKEN}&month={month()}"
                                        ).get_data(as_text=True)
    for i, raw in enumerate(pngs(html)):
        (tmp_path / f"chart-{i:02d}.png").write_bytes(raw)
    assert len(list(tmp_path.glob("chart-*.png"))) == len(pngs(html)) >= 10


def test_report_is_503_not_a_partial_month_while_a_cluster_node_is_down(own_cluster):
    """On a cluster a day's counts are spread over every node (bot.figures.day_tags): while
    one has no primary, the page and the CSV say so (503, the staff wording) instead of a 500
    — or of a month missing a node's counts, shown or published as the month."""
    import uuid

    from bot.config import Settings
    from bot.handoff.notify import load_labels
    from bot.redisconn import connect
    from bot.wiring import build
    from tests.conftest import SECRET
    from tests.fakes import net

    client = connect(own_cluster.url, cluster=True)
    settings = Settings(redis_url=own_cluster.url, redis_cluster=True, bot_secret_key=SECRET,
                        key_prefix=f"tsunagu-test-{uuid.uuid4().hex[:10]}",
                        staff_report_token=TOKEN)
    services = build(settings, client=client)
    app = create_app(settings, services=services)
    http = app.test_client()
    assert http.get(f"/staff/report.csv?month={month()}&token={TOKEN}").status_code == 200
    wording = load_labels(settings.municipality)["report.unavailable"]
    victim = int(client.get_primaries()[0].port)
    with net.node_down(own_cluster, victim):
        for path in ("/staff/report", "/staff/report.csv"):
            resp = http.get(f"{path}?month={month()}&token={TOKEN}")
            assert resp.status_code == 503, (path, resp.status_code)
            assert resp.get_data(as_text=True).strip() == wording
            assert resp.headers["Cache-Control"] == "no-store"
    client.close()
