"""Backend settings are private to a thread or asyncio task.

* ``use_backend`` blocks in 8 interleaved threads (and 8 interleaved asyncio
  tasks), each with a different backend: every call runs on its own thread's
  backend, gives the right answer, and ``get_backend()`` sees only its own
  setting, also when all of them share one transformed function.
* ``set_backend`` is process-wide: it changes the default that other threads
  see outside their ``use_backend`` blocks (as documented in
  :mod:`tad_autograd.dispatch._settings`).
* An exception, in the function or in the ``with`` block, leaves the setting
  as it was.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch

import tad_autograd as ta

N_WORKERS = 8
N_CALLS = 210  # per worker, per kind of worker
BARRIER_EVERY = 10  # calls between rendezvous of all threads


def _settings() -> List[str]:
    """8 settings cycling over the available backends and "auto"."""
    names = [*ta.available_backends(), "auto"]
    return [names[i % len(names)] for i in range(N_WORKERS)]


def _automatic_choice() -> str:
    return ta.explain(torch.zeros(1)).backend


def _expected_inside(setting: str) -> str:
    """What ``get_backend()`` reports inside a transformed function under ``setting``."""
    return _automatic_choice() if setting == "auto" else setting


class _Probe:
    """A function that records the backend setting it runs under (per thread/task)."""

    def __init__(self) -> None:
        self.seen: contextvars.ContextVar[Optional[List[str]]] = contextvars.ContextVar(
            "seen", default=None
        )

    def start(self) -> List[str]:
        seen: List[str] = []
        self.seen.set(seen)
        return seen

    def __call__(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        seen = self.seen.get()
        if seen is not None:
            seen.append(ta.get_backend())
        return torch.sin(k * x) * x


def _x(worker: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 3, dtype=torch.float64) * (worker + 1) / N_WORKERS


def _X(worker: int) -> torch.Tensor:
    return torch.stack([_x(worker) + j for j in range(4)])


ONE = torch.tensor(1.0, dtype=torch.float64)


def _jac_expected(x: torch.Tensor, k: Any) -> torch.Tensor:
    return torch.diag(k * torch.cos(k * x) * x + torch.sin(k * x))


def _vmap_expected(X: torch.Tensor, k: Any) -> torch.Tensor:
    return torch.sin(k * X) * X


def _one_call(
    i: int,
    worker: int,
    setting: str,
    probe: _Probe,
    shared_jac: Callable[..., Any],
    shared_vmap: Callable[..., Any],
) -> None:
    """One call (alternating jacrev/vmap, own and shared transformed functions), checked."""
    assert ta.get_backend() == setting
    k = torch.tensor(1.0 + (i % 7) / 7, dtype=torch.float64)
    seen = probe.start()
    if i % 4 == 0:
        result = shared_jac(_x(worker), k)
        expected = _jac_expected(_x(worker), k)
    elif i % 4 == 1:
        result = shared_vmap(_X(worker), k)
        expected = _vmap_expected(_X(worker), k)
    elif i % 4 == 2:
        result = ta.jacrev(probe)(_x(worker), k)
        expected = _jac_expected(_x(worker), k)
    else:
        result = ta.vmap(probe, in_dims=(0, None))(_X(worker), k)
        expected = _vmap_expected(_X(worker), k)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)
    want = _expected_inside(setting)
    assert seen and all(s == want for s in seen), f"call {i} under {setting!r} ran under {seen}"
    assert ta.get_backend() == setting


def test_threads_use_backend_isolated() -> None:
    settings = _settings()
    probe = _Probe()
    shared_jac = ta.jacrev(probe)
    shared_vmap = ta.vmap(probe, in_dims=(0, None))
    barrier = threading.Barrier(N_WORKERS, timeout=120)
    errors: List[Tuple[int, BaseException]] = []
    done = [0] * N_WORKERS

    def work(worker: int) -> None:
        setting = settings[worker]
        try:
            assert ta.get_backend() == "auto", "a new thread inherited a use_backend block"
            barrier.wait()
            with ta.use_backend(setting):
                for i in range(N_CALLS):
                    if i % BARRIER_EVERY == 0:
                        barrier.wait()
                    _one_call(i, worker, setting, probe, shared_jac, shared_vmap)
                    done[worker] += 1
            assert ta.get_backend() == "auto"
        except BaseException as e:  # noqa: B902 - reported below
            errors.append((worker, e))
            barrier.abort()

    threads = [
        threading.Thread(target=work, args=(w,), name=f"worker-{w}") for w in range(N_WORKERS)
    ]
    with ta.use_backend("autograd"):  # the main thread's block is invisible to the workers
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert ta.get_backend() == "autograd"
    assert not any(t.is_alive() for t in threads), "a worker hung"
    real = [(w, e) for w, e in errors if not isinstance(e, threading.BrokenBarrierError)]
    assert not real, "\n".join(f"worker {w} ({settings[w]}): {e!r}" for w, e in real)
    assert not errors, errors
    assert done == [N_CALLS] * N_WORKERS
    assert ta.get_backend() == "auto"


def test_asyncio_tasks_use_backend_isolated() -> None:
    settings = _settings()
    probe = _Probe()
    shared_jac = ta.jacrev(probe)
    shared_vmap = ta.vmap(probe, in_dims=(0, None))
    done = [0] * N_WORKERS

    async def work(worker: int) -> None:
        setting = settings[worker]
        await asyncio.sleep(0)
        with ta.use_backend(setting):
            for i in range(N_CALLS):
                _one_call(i, worker, setting, probe, shared_jac, shared_vmap)
                done[worker] += 1
                await asyncio.sleep(0)  # let the other tasks run in between
                assert ta.get_backend() == setting
        assert ta.get_backend() == "auto"

    order: List[int] = []

    async def main() -> None:
        async def tracked(worker: int) -> None:
            await work(worker)
            order.append(worker)

        await asyncio.gather(*(tracked(w) for w in range(N_WORKERS)))
        assert ta.get_backend() == "auto"

    asyncio.run(main())
    assert done == [N_CALLS] * N_WORKERS
    assert sorted(order) == list(range(N_WORKERS))
    assert ta.get_backend() == "auto"


def test_asyncio_tasks_interleave() -> None:
    """The tasks really interleave, and a task's block is invisible to the tasks in between."""
    settings = _settings()
    log: List[Tuple[int, str]] = []

    async def work(worker: int) -> None:
        with ta.use_backend(settings[worker]):
            for _ in range(5):
                log.append((worker, ta.get_backend()))
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(work(w) for w in range(N_WORKERS)))

    asyncio.run(main())
    assert all(seen == settings[w] for w, seen in log)
    # round-robin: the first N_WORKERS entries come from N_WORKERS different tasks
    assert len({w for w, _ in log[:N_WORKERS]}) == N_WORKERS


def test_task_created_inside_block_inherits_it() -> None:
    """A task created inside a ``use_backend`` block copies it (contextvars), and its own
    blocks do not leak back to the creator."""

    async def child() -> str:
        inherited = ta.get_backend()
        with ta.use_backend("auto"):
            await asyncio.sleep(0)
            assert ta.get_backend() == "auto"
        return inherited

    async def main() -> None:
        with ta.use_backend("autograd"):
            inherited = await asyncio.create_task(child())
            assert ta.get_backend() == "autograd"
        assert inherited == "autograd"

    asyncio.run(main())


def test_set_backend_is_global_across_threads() -> None:
    """``set_backend`` in one thread changes the default that other threads see outside
    their ``use_backend`` blocks; a block still wins over it."""
    if "autograd" not in ta.available_backends():  # pragma: no cover
        pytest.skip("autograd backend unavailable")
    other = next((b for b in ta.available_backends() if b != "autograd"), None)
    probe = _Probe()
    x = _x(0)
    set_done = threading.Event()
    checked = threading.Event()
    results: Dict[str, Any] = {}
    errors: List[BaseException] = []

    def setter() -> None:
        try:
            ta.set_backend("autograd")
            set_done.set()
            assert checked.wait(60)
            ta.set_backend("auto")
        except BaseException as e:  # noqa: B902
            errors.append(e)
            set_done.set()

    def observer() -> None:
        try:
            assert set_done.wait(60)
            results["outside"] = ta.get_backend()
            seen = probe.start()
            torch.testing.assert_close(ta.jacrev(probe)(x, ONE), _jac_expected(x, ONE))
            results["ran_outside"] = list(seen)
            if other is not None:
                with ta.use_backend(other):
                    results["inside"] = ta.get_backend()
                    seen = probe.start()
                    torch.testing.assert_close(ta.jacrev(probe)(x, ONE), _jac_expected(x, ONE))
                    results["ran_inside"] = list(seen)
        except BaseException as e:  # noqa: B902
            errors.append(e)
        finally:
            checked.set()

    threads = [threading.Thread(target=setter), threading.Thread(target=observer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results["outside"] == "autograd"
    assert set(results["ran_outside"]) == {"autograd"}
    if other is not None:
        assert results["inside"] == other
        assert set(results["ran_inside"]) == {other}
    assert ta.get_backend() == "auto"  # the setter restored it


def test_thread_does_not_inherit_use_backend_block() -> None:
    seen: List[str] = []
    with ta.use_backend("autograd"):
        t = threading.Thread(target=lambda: seen.append(ta.get_backend()))
        t.start()
        t.join()
    assert seen == ["auto"]


# --------------------------------------------------------------------------- exceptions


def _fails(x: torch.Tensor) -> torch.Tensor:
    raise ValueError("boom")


def test_setting_restored_after_exception_in_call(backend: Optional[str]) -> None:
    """Inside a block, a failing call leaves the block's setting; the next call works."""
    setting = backend or "auto"
    x = _x(3)
    with ta.use_backend(setting):
        for transform in (ta.jacrev, ta.vmap, ta.hessian):
            with pytest.raises(ValueError, match="boom"):
                transform(_fails)(x)
            assert ta.get_backend() == setting
            probe = _Probe()
            seen = probe.start()
            torch.testing.assert_close(ta.jacrev(probe)(x, ONE), _jac_expected(x, ONE))
            assert set(seen) == {_expected_inside(setting)}
    assert ta.get_backend() == "auto"


def test_setting_restored_after_exception_with_explicit_argument(backend: Optional[str]) -> None:
    x = _x(3)
    ta.set_backend("autograd")
    with pytest.raises(ValueError, match="boom"):
        ta.jacrev(_fails, backend=backend)(x)
    assert ta.get_backend() == "autograd"
    ta.set_backend(None)
    assert ta.get_backend() == "auto"


def test_setting_restored_when_block_raises(backend: Optional[str]) -> None:
    """An exception leaving nested ``with use_backend`` blocks restores each level."""
    setting = backend or "auto"
    with ta.use_backend("autograd"):
        with pytest.raises(KeyError):
            with ta.use_backend(setting):
                assert ta.get_backend() == setting
                with ta.use_backend("auto"):
                    raise KeyError("inner")
        assert ta.get_backend() == "autograd"
        with pytest.raises(RuntimeError):
            with ta.use_backend(setting):
                ta.jacrev(lambda t: (_ for _ in ()).throw(RuntimeError("gen")))(torch.ones(2))
        assert ta.get_backend() == "autograd"
    assert ta.get_backend() == "auto"


def test_setting_restored_after_exception_in_nested_transform(backend: Optional[str]) -> None:
    """An error deep inside ``jacrev(vmap(jacrev(f)))`` leaves no inner setting behind."""
    setting = backend or "auto"
    X = torch.ones(2, 3, dtype=torch.float64)
    with ta.use_backend(setting):
        with pytest.raises(ValueError, match="boom"):
            ta.jacrev(ta.vmap(ta.jacrev(_fails)))(X)
        assert ta.get_backend() == setting
    assert ta.get_backend() == "auto"


def test_exception_in_one_thread_does_not_disturb_others() -> None:
    settings = _settings()
    barrier = threading.Barrier(N_WORKERS, timeout=120)
    errors: List[BaseException] = []

    def work(worker: int) -> None:
        setting = settings[worker]
        try:
            with ta.use_backend(setting):
                for i in range(20):
                    barrier.wait()
                    if (i + worker) % 2:
                        with pytest.raises(ValueError, match="boom"):
                            ta.jacrev(_fails)(_x(worker))
                    else:
                        torch.testing.assert_close(
                            ta.jacrev(torch.sin)(_x(worker)), torch.diag(torch.cos(_x(worker)))
                        )
                    assert ta.get_backend() == setting
        except BaseException as e:  # noqa: B902
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(N_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    assert not real, real
    assert not errors, errors
