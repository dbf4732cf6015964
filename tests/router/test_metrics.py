"""server/router/metrics.py."""


def test_metrics_count_each_outcome_once():
    from prometheus_client import generate_latest

    from server.router.metrics import RouterMetrics

    m = RouterMetrics()
    for node, status in (("a", 200), ("a", 200), ("b", 503), ("a", 499)):
        m.observe(node, status, 0.02)
    text = generate_latest(m.registry).decode()
    assert 'edgefleet_router_requests_total{node="a",status="200"} 2.0' in text
    assert 'edgefleet_router_requests_total{node="b",status="503"} 1.0' in text
    assert 'edgefleet_router_requests_total{node="a",status="499"} 1.0' in text
    assert "edgefleet_router_request_seconds_count 4.0" in text
