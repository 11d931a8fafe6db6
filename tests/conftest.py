import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jaxtyping import install_import_hook  # noqa: E402

# Runtime shape checking for the whole package in the test suite: a wrong tensor shape fails loudly here.
_hook = install_import_hook("tl_vpd", "beartype.beartype")

import torch  # noqa: E402

# One thread: on a shared 2-core machine, torch with 2 threads on tiny models can run 30-100x
# slower when the other core is busy; the tests use tiny models where 1 thread loses little.
torch.set_num_threads(1)


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS look-up or connection (the probe, or a library's request) fails the test."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return calls
