"""Named file locks: exclusive/shared, across processes, from asyncio; process identities."""

import asyncio
import contextlib
import subprocess
import sys

from pybk.core.store.locks import Locks, is_alive, lock_file_name, process_identity


def test_exclusive_and_shared(tmp_path):
    locks = Locks(tmp_path)
    with locks.lock("a"):
        assert locks.try_lock("a") is None
        assert locks.try_lock("a", shared=True) is None
        other = locks.try_lock("b")
        assert other is not None
        other.release()
    first = locks.try_lock("a", shared=True)
    second = locks.try_lock("a", shared=True)
    assert first and second
    assert locks.try_lock("a") is None
    first.release()
    second.release()
    assert locks.try_lock("a") is not None


def test_lock_names_become_safe_file_names():
    assert lock_file_name("build-abc") == "build-abc.lock"
    weird = lock_file_name("cachemount-/root/.cache#0")
    assert "/" not in weird and weird.endswith(".lock")
    assert weird != lock_file_name("cachemount-/root/.cache#1")


def test_async_waiters_queue_in_order(tmp_path):
    locks = Locks(tmp_path)
    events = []

    async def user(name, hold_for, started=None, wait_for=None):
        if wait_for is not None:
            await wait_for.wait()
        async with locks.lock("x"):
            events.append(f"{name} in")
            if started is not None:
                started.set()
            await asyncio.sleep(hold_for)
            events.append(f"{name} out")

    async def main():
        started = asyncio.Event()
        await asyncio.gather(user("a", 0.05, started=started),
                             user("b", 0, wait_for=started),
                             user("c", 0, wait_for=started))

    asyncio.run(main())
    assert events[:2] == ["a in", "a out"]
    assert events[2:] in (["b in", "b out", "c in", "c out"], ["c in", "c out", "b in", "b out"])


def test_cancelled_waiter_does_not_keep_the_lock(tmp_path):
    locks = Locks(tmp_path)

    async def main():
        held = locks.lock("x")
        await held.acquire_async()
        waiter = asyncio.create_task(locks.lock("x").acquire_async())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        held.release()
        for _ in range(100):  # the waiting thread takes and drops the lock once it returns
            probe = locks.try_lock("x")
            if probe is not None:
                probe.release()
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(main())


def test_lock_is_exclusive_across_processes(tmp_path):
    script = (
        "import sys, time\n"
        "from pybk.core.store.locks import Locks\n"
        "lock = Locks(sys.argv[1]).lock('x')\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        locks = Locks(tmp_path)
        assert locks.try_lock("x") is None

        async def wait():
            async with locks.lock("x"):
                return child.poll()

        async def main():
            task = asyncio.create_task(wait())
            await asyncio.sleep(0.05)
            assert not task.done()
            child.stdin.write("\n")
            child.stdin.flush()
            return await task

        # the lock was only granted after the child let go (it exits right after)
        asyncio.run(main())
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()


def test_process_identity_and_liveness():
    me = process_identity()
    assert is_alive(me)
    child = subprocess.run([sys.executable, "-c",
                            "from pybk.core.store.locks import process_identity as p; print(p())"],
                           capture_output=True, text=True, check=True)
    dead = child.stdout.strip()
    assert dead != me and not is_alive(dead)
    boot, pid, start = me.rsplit(":", 2)
    assert not is_alive(f"{boot}:{pid}:{int(start) + 1}")  # same pid, other start: reused pid
    assert not is_alive("garbage")
