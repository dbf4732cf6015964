from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.clients import asgi_client
from tests.nodeproc import NodeProcess

os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

DEMO = "edgefleet-demo-random"
NODE_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from server.demo_model import ensure_demo_model

    return ensure_demo_model()


# The shared nodes' context. Long enough that requests holding every slot (C2, C4) stay in
# flight for tens of seconds even on a 2-core machine whose CPU the test process shares.
CONTEXT = 4096


def vllm_node_args(model_dir: Path, *extra: str, context: int = 1024) -> list[str]:
    return ["--model", str(model_dir), "--enforce-eager", "--kv-cache-gb", "0.25", "--max-model-len", str(context),
            *extra]


ENGINES = ["vllm", "native"]


@pytest.fixture(scope="session", params=ENGINES)
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path):
    """One real node per engine, shared by the end-to-end tests: the vllm-cpu engine (~30 s
    to start), then edgefleet's native engine. pytest runs every test on one before the other."""
    engine = request.param
    tmp = tmp_path_factory.mktemp(f"node-{engine}")
    args = vllm_node_args(demo_model_dir, context=CONTEXT) if engine == "vllm" else [
        "--engine", "native", "--model", str(demo_model_dir), "--max-model-len", str(CONTEXT), "--kv-cache-gb", "0.25"]
    proc = NodeProcess(*args, "--max-num-seqs", "4", "--max-queued-requests", "4", "--state-dir", str(tmp / "state"),
                       "--name", "e2e-node", "--zone", "test", "--label", "rack=1",
                       log_path=tmp / "node.log", api_key=NODE_KEY)
    proc.engine = engine
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def node_client(tmp_path):
    """Factory: ``await node_client(engine, **settings)`` builds an in-process node over a
    scripted engine (tests/fakes.py) and returns a client for it, with ``.runtime`` set."""
    from server.api.app import build_app
    from server.config import NodeSettings
    from server.runtime import NodeRuntime
    from tests.fakes import ScriptedEngine

    clients = []

    async def make(engine=None, **settings):
        runtime = NodeRuntime(NodeSettings(state_dir=tmp_path, **settings), engine or ScriptedEngine())
        await runtime.start_engine()
        client = asgi_client(build_app(runtime))
        client.runtime = runtime
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def router_client():
    """Factory: ``router_client(settings)`` builds an in-process router (lifespan not run: no
    poller, no nodes unless the test adds them) and returns a client for it, ``.router`` set."""
    from server.router.app import create_app

    clients = []

    def make(settings=None):
        from server.router.config import RouterSettings

        app, router = create_app(settings or RouterSettings())
        client = asgi_client(app)
        client.router = router
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
