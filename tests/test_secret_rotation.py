"""Token-secret rotation without a restart (docs/security.md, "Rotation").

A ``TokenSigner`` made with ``follow=data_dir`` re-reads ``secret.key`` and
``secret.previous`` within a second of a rotation (one ``stat`` a second at most), keeps
its secrets when the files cannot be read, and swaps them whole under concurrent use.
End to end: ``sessionactors rotate-secret`` against a running daemon, whose gateway
signs with the new secret within a second, accepts tokens of the previous secret for one
rotation and refuses them after the second; and the command refuses a configured secret.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from sessionactors.auth import secrets as secrets_file
from sessionactors.auth.secrets import FileSecrets
from sessionactors.auth.tokens import SECRET_FILE, TokenSigner, load_or_create_secrets, rotate_secret
from sessionactors.errors import InvalidToken

from .daemon_harness import Client, DaemonProcess, running, wait_for

T0 = 1_700_000_000.0
INVALID_TOKEN = {"error": "Invalid token", "error_code": 401}
CLI = [sys.executable, "-m", "sessionactors.cli"]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def key(data_dir: Path) -> bytes:
    """The signing secret on disk now."""
    return (data_dir / SECRET_FILE).read_text().strip().encode()


def signed_by(secret: bytes, token: str) -> bool:
    """Whether ``token`` verifies with ``secret`` alone (at the time it was issued)."""
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    try:
        TokenSigner([secret], now=lambda: float(iat)).verify(token)
    except InvalidToken:
        return False
    return True


def refusal(signer: TokenSigner, token: str) -> str | None:
    """Why ``signer`` refuses ``token`` (None: it accepts it)."""
    try:
        signer.verify(token)
    except InvalidToken as exc:
        return exc.reason
    return None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    load_or_create_secrets(d)
    return d


def following(data_dir: Path, clock: Clock) -> TokenSigner:
    return TokenSigner(load_or_create_secrets(data_dir), ttl=3600, now=clock, follow=data_dir)


# -- the signer follows the files ------------------------------------------------------------


def test_one_rotation_keeps_old_tokens_two_refuse_them(data_dir: Path, clock: Clock) -> None:
    signer = following(data_dir, clock)
    first_secret = key(data_dir)
    old = signer.issue("s")
    assert signed_by(first_secret, old)

    rotate_secret(data_dir)
    second_secret = key(data_dir)
    assert second_secret != first_secret
    # within the second of the last check the signer has not looked at the file yet
    assert signed_by(first_secret, signer.issue("s"))
    clock.t += 1.0
    new = signer.issue("t")
    assert signed_by(second_secret, new) and not signed_by(first_secret, new)
    assert signer.verify(old).session_id == "s"  # the previous secret still verifies

    rotate_secret(data_dir)
    clock.t += 1.0
    assert refusal(signer, old) == "bad signature"
    assert signer.verify(new).session_id == "t"  # signed with what is now secret.previous
    assert signed_by(key(data_dir), signer.issue("u"))


def test_without_follow_nothing_is_reloaded(data_dir: Path, clock: Clock) -> None:
    signer = TokenSigner(load_or_create_secrets(data_dir), ttl=3600, now=clock)
    first_secret = key(data_dir)
    old = signer.issue("s")
    rotate_secret(data_dir)
    rotate_secret(data_dir)
    clock.t += 10.0
    assert signer.verify(old).session_id == "s"
    assert signed_by(first_secret, signer.issue("t"))


def test_at_most_one_stat_a_second(data_dir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(SECRET_FILE):
            stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(secrets_file.os, "stat", counting_stat)
    signer = following(data_dir, clock)
    token = signer.issue("s")  # the first check reads the files
    stats.clear()
    for _ in range(200):
        signer.verify(token)
        signer.issue("s")
    assert stats == []
    clock.t += 0.999
    signer.verify(token)
    assert stats == []
    clock.t += 0.001
    signer.verify(token)
    assert len(stats) == 1  # one stat, and the file is unchanged: nothing read
    clock.t -= 30.0  # the wall clock stepped back: checks go on
    signer.verify(token)
    assert len(stats) == 2


def test_unreadable_or_corrupt_secret_keeps_the_old_ones(
    data_dir: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    signer = following(data_dir, clock)
    first_secret = key(data_dir)
    token = signer.issue("s")
    path = data_dir / SECRET_FILE

    def step() -> None:
        clock.t += 1.0
        assert signer.verify(token).session_id == "s"
        assert signed_by(first_secret, signer.issue("s"))

    with caplog.at_level(logging.WARNING, logger="sessionactors.auth.secrets"):
        path.write_text("too short\n")  # corrupt: fewer than 32 bytes
        step()
        assert "fewer than 32 bytes" in caplog.text
        caplog.clear()
        path.write_bytes(b"\xff" * 64 + b"\n")  # not text
        step()
        assert "UnicodeDecodeError" in caplog.text
        caplog.clear()
        path.unlink()
        path.mkdir()  # unreadable (whoever runs the test, root included)
        step()
        assert "cannot re-read" in caplog.text
        caplog.clear()
        path.rmdir()  # missing
        step()
        assert "cannot stat" in caplog.text
        caplog.clear()
        step()  # the same problem is logged once, not every second
        assert caplog.text == ""
    assert first_secret.decode() not in caplog.text

    fixed = os.urandom(32).hex()  # good files again (the operator restores a rotation): followed
    (data_dir / "secret.previous").write_text(first_secret.decode() + "\n")
    path.write_text(fixed + "\n")
    clock.t += 1.0
    assert signed_by(fixed.encode(), signer.issue("t"))
    assert signer.verify(token).session_id == "s"


def test_swap_is_atomic_under_concurrent_verifies(data_dir: Path) -> None:
    """Threads verifying a token during a rotation never see a half-swapped list."""
    signer = TokenSigner(load_or_create_secrets(data_dir), ttl=3600, follow=data_dir)
    token = signer.issue("s")
    failures: list[str] = []
    stop = threading.Event()

    def verify_forever() -> None:
        while not stop.is_set():
            try:
                signer.verify(token)
                signer.issue("t")
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=verify_forever) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        rotate_secret(data_dir)
        new_secret = key(data_dir)
        wait_for(lambda: signed_by(new_secret, signer.issue("u")), 5.0, "the signer to follow the rotation")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not failures, failures[:3]


def test_file_secrets_reads_only_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("a")
    reads: list[int] = []
    clock = Clock()

    def read() -> list[bytes]:
        reads.append(1)
        return [path.read_bytes()]

    files = FileSecrets(path, read, now=clock)
    assert files() == [b"a"]  # the first call reads
    clock.t += 1.0
    assert files() is None and len(reads) == 1  # unchanged: no read
    tmp = tmp_path / "tmp"
    tmp.write_text("b")
    os.replace(tmp, path)
    assert files() is None  # checked less than a second ago
    clock.t += 1.0
    assert files() == [b"b"] and len(reads) == 2
    os.utime(path, ns=(1, 1))  # changed, the same content: read, nothing new
    clock.t += 1.0
    assert files() is None and len(reads) == 3


# -- the command and a running daemon --------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
    env.update(THESPIAN_BASE_IPADDR="127.0.0.1", **extra)
    return env


def rotate(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "rotate-secret", "--data-dir", str(data_dir)],
        env=cli_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon (echo runtime, file secret); afterwards no process of it may be left."""
    with running(tmp_path / "data", close_delay=30.0) as d:
        yield d


def poll(what: str, attempt: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``attempt()`` until truthy, 0.1 s apart, failing after ``timeout`` s."""
    return wait_for(attempt, timeout, what, pump=lambda: time.sleep(0.1))


def test_rotate_secret_on_a_running_daemon(daemon: DaemonProcess, clients: Callable[[str], Client]) -> None:
    d = daemon
    first_secret = key(d.data_dir)
    ok = clients(d.url).init()
    assert ok["status"] == "ok", ok
    sid, first_token = ok["session_id"], ok["token"]
    assert signed_by(first_secret, first_token)

    done = rotate(d.data_dir)
    assert done.returncode == 0, done.stderr
    assert "rotated the token secret" in done.stdout and "previous" in done.stdout
    second_secret = key(d.data_dir)
    assert second_secret != first_secret

    def fresh_token_signed_with(secret: bytes) -> Callable[[], bool]:
        def attempt() -> bool:
            c = clients(d.url)
            answer = c.init()
            c.close()
            assert answer["status"] == "ok", answer
            return signed_by(secret, answer["token"])

        return attempt

    poll("a fresh INIT signed with the new secret", fresh_token_signed_with(second_secret))
    rejoined = clients(d.url).init(token=first_token)  # the previous secret still verifies
    assert rejoined["status"] == "ok" and rejoined["session_id"] == sid, rejoined
    second_token = rejoined["token"]
    assert signed_by(second_secret, second_token) and not signed_by(first_secret, second_token)
    assert d.http("GET", f"/api/sessions/{sid}", token=first_token)[0] == 200

    done = rotate(d.data_dir)
    assert done.returncode == 0, done.stderr

    def first_token_refused() -> bool:
        c = clients(d.url)
        answer = c.init(token=first_token)
        c.close()
        assert answer == INVALID_TOKEN or answer.get("status") == "ok", answer
        return answer == INVALID_TOKEN

    poll("the first token to be refused after the second rotation", first_token_refused)
    assert d.http("GET", f"/api/sessions/{sid}", token=first_token) == (401, {"error": "Invalid token"})
    again = clients(d.url).init(token=second_token)  # signed with what is now secret.previous
    assert again["status"] == "ok" and again["session_id"] == sid, again
    assert signed_by(key(d.data_dir), again["token"])


def test_rotate_secret_refuses_a_configured_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    load_or_create_secrets(data)
    before = key(data)
    done = rotate(data, SESSIONACTORS_TOKEN_SECRET="c" * 40)
    assert done.returncode != 0 and done.stdout == ""
    assert "token_secret is configured" in done.stderr, done.stderr
    assert key(data) == before and not (data / "secret.previous").exists()


def test_rotate_secret_refuses_an_unusable_data_dir(tmp_path: Path) -> None:
    missing = rotate(tmp_path / "nowhere")
    assert missing.returncode != 0 and "no token secret" in missing.stderr, missing.stderr
    assert not (tmp_path / "nowhere").exists()  # a mistyped path creates nothing
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / SECRET_FILE).write_text("short\n")
    done = rotate(corrupt)
    assert done.returncode != 0 and "fewer than 32 bytes" in done.stderr, done.stderr
    assert (corrupt / SECRET_FILE).read_text() == "short\n"
