"""The helpers the store backends share: the one retry loop (`stores.retry`), the one reading
of a yes/no word (`settings.truthy`) and the one list of "busy" Redis replies, on which the
event store and the workers' fault classification agree."""

from __future__ import annotations

import pytest
import redis
from redis import exceptions as rx

from mfm_dist.settings import Env, truthy
from mfm_dist.stores.redis_events import is_server_busy
from mfm_dist.stores.retry import BoundedRetries
from workers.faults import is_transient


class Flaky:
    """Fails with `errors` (in order), then returns `value`."""

    def __init__(self, *errors: Exception, value: str = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.value = value

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def test_retries_accepted_faults_with_doubling_capped_backoff() -> None:
    slept: list[float] = []
    fn = Flaky(*(OSError(str(i)) for i in range(4)))
    result = BoundedRetries(5, 0.1, 0.3).call(fn, lambda e: True, sleep=slept.append)
    assert result == "ok" and fn.calls == 5
    assert slept == [0.1, 0.2, 0.3, 0.3]


def test_the_last_fault_propagates_unchanged_once_the_tries_are_spent() -> None:
    slept: list[float] = []
    last = OSError("last")
    fn = Flaky(OSError("a"), OSError("b"), last)
    with pytest.raises(OSError) as caught:
        BoundedRetries(2, 1, 8).call(fn, lambda e: True, sleep=slept.append)
    assert caught.value is last and fn.calls == 3 and slept == [1, 2]


def test_a_fault_not_worth_retrying_propagates_at_once() -> None:
    slept: list[float] = []
    fn = Flaky(ValueError("never"))
    with pytest.raises(ValueError):
        BoundedRetries(5, 1, 1).call(fn, lambda e: isinstance(e, OSError), sleep=slept.append)
    assert fn.calls == 1 and slept == []


def test_no_retries_means_one_try() -> None:
    slept: list[float] = []
    fn = Flaky(OSError("x"))
    with pytest.raises(OSError):
        BoundedRetries(0, 1, 1).call(fn, lambda e: True, sleep=slept.append)
    assert fn.calls == 1 and slept == []


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "Yes", "on"])
def test_truthy_words(word: str) -> None:
    assert truthy(word)
    assert Env({"MFM_X": word}).flag("MFM_X", False) is True


@pytest.mark.parametrize("word", ["0", "false", "no", "off", "", "2", "y"])
def test_everything_else_is_no(word: str) -> None:
    assert not truthy(word)


BUSY = [
    rx.BusyLoadingError("Redis is loading the dataset in memory"),
    rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
    rx.TryAgainError("Multiple keys request during rehashing of slot"),
    rx.MasterDownError("Link with MASTER is down"),
    redis.ResponseError("BUSY Redis is busy running a script"),
    redis.ResponseError("LOADING Redis is loading the dataset in memory"),
]
NOT_BUSY = [
    redis.ResponseError("ERR unknown command"),
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    rx.DataError("Invalid input"),
]


@pytest.mark.parametrize("exc", BUSY, ids=lambda e: type(e).__name__ + ":" + str(e)[:8])
def test_busy_replies_are_one_list(exc: Exception) -> None:
    assert is_server_busy(exc)
    assert is_transient(exc)  # the workers retry what the store calls busy


@pytest.mark.parametrize("exc", NOT_BUSY, ids=lambda e: type(e).__name__)
def test_other_replies_are_not_busy(exc: Exception) -> None:
    assert not is_server_busy(exc)
    assert not is_transient(exc)
