"""server/router/cli.py: the fleet table."""

from server.router.cli import fleet_table


def test_fleet_table_renders():
    from rich.console import Console

    doc = {"policy": "nearest_idle", "score": "s", "nodes": [
        {"name": "a", "url": "http://a:1", "zone": None, "health": "open", "simulated": True, "capacity": None,
         "rtt_ms": None, "score_ms": None, "inflight": 0}]}
    console = Console(record=True, width=200)
    console.print(fleet_table(doc))
    text = console.export_text()
    assert "a (sim)" in text and "open" in text
