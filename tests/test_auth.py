"""Tests of sessionactors.auth.tokens (session tokens, secrets on disk) and sessionactors.auth.github (GitHub identity)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionactors.auth.github import GitHubUser, GitHubVerifier, check_owner, load_allowlist, redact
from sessionactors.auth.tokens import (
    MAX_TOKEN_CHARS,
    TokenClaims,
    TokenSigner,
    load_or_create_secrets,
    rotate_secret,
)
from sessionactors.errors import ConfigError, Forbidden, GitHubUnavailable, InvalidGitHubToken, InvalidToken

from .github_standin import (
    SLOW_USER,
    TOKEN_500,
    TOKEN_502,
    TOKEN_MALFORMED,
    TOKEN_RATE_LIMITED,
    TOKEN_REDIRECT,
    TOKEN_SLOW,
    StandIn,
    start_standin,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
T0 = 1_800_000_000.0


class Clock:
    """An injectable clock the test moves by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: Any, payload: Any, key: bytes | None = KEY, alg: str = "sha256") -> str:
    """A token built by hand; signed with HMAC(``key``) or with an empty signature when None."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = "" if key is None else b64(hmac.new(key, signing_input.encode(), alg).digest())
    return f"{signing_input}.{sig}"


def good_claims(**over: Any) -> dict[str, Any]:
    claims = {"sid": "s1", "iat": int(T0), "exp": int(T0) + 60, "iss": "sessionactors", "ver": 0, "jti": "j"}
    claims.update(over)
    return claims


def reason_of(signer: TokenSigner, token: Any) -> str:
    with pytest.raises(InvalidToken) as info:
        signer.verify(token)
    assert str(info.value) == "Invalid token" and info.value.error_code == 401
    if isinstance(token, str) and len(token) > 8:
        assert token not in info.value.reason
    return info.value.reason


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> TokenSigner:
    return TokenSigner([KEY], ttl=3600, now=clock)


# -- session tokens ---------------------------------------------------------------------


def test_round_trip(signer: TokenSigner) -> None:
    token = signer.issue("sess-1", token_version=3)
    assert signer.verify(token) == TokenClaims("sess-1", int(T0), int(T0) + 3600, 3)
    payload = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert set(payload) == {"sid", "iat", "exp", "iss", "ver", "jti"}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert signer.issue("sess-1") != signer.issue("sess-1")  # random jti


def test_expiry_with_injected_clock(signer: TokenSigner, clock: Clock) -> None:
    token = signer.issue("s")
    clock.t += 3599
    signer.verify(token)
    clock.t += 1
    assert reason_of(signer, token) == "expired"
    lenient = TokenSigner([KEY], ttl=3600, leeway=30, now=clock)
    lenient.verify(token)
    clock.t += 30
    assert reason_of(lenient, token) == "expired"


def test_forged_with_another_key(signer: TokenSigner, clock: Clock) -> None:
    forged = TokenSigner([OTHER_KEY], now=clock).issue("s")
    assert reason_of(signer, forged) == "bad signature"


def test_truncated(signer: TokenSigner) -> None:
    token = signer.issue("s")
    head, payload, sig = token.split(".")
    assert reason_of(signer, token[:-1]) in ("bad signature", "malformed")
    assert reason_of(signer, f"{head}.{payload}.") == "bad signature"
    assert reason_of(signer, f"{head}.{payload}") == "malformed"
    assert reason_of(signer, f"{head}.{payload[:-3]}.{sig}") in ("bad signature", "malformed")
    assert reason_of(signer, token[: len(token) // 2]) == "malformed"


def test_alg_none_refused(signer: TokenSigner) -> None:
    token = craft({"alg": "none", "typ": "JWT"}, good_claims(), key=None)
    assert reason_of(signer, token) == "algorithm not allowed"
    for alg in ("None", "NONE", "nOnE"):
        assert reason_of(signer, craft({"alg": alg, "typ": "JWT"}, good_claims(), key=None)) in (
            "algorithm not allowed",
            "bad signature",
        )


def test_other_algorithms_refused_with_right_key_material(signer: TokenSigner) -> None:
    hs512 = jwt.encode(good_claims(), KEY * 2, algorithm="HS512")  # long enough for HS512
    assert reason_of(TokenSigner([KEY * 2], now=signer._now), hs512) == "algorithm not allowed"
    assert reason_of(signer, jwt.encode(good_claims(), KEY * 2, algorithm="HS384")) == "algorithm not allowed"
    # key confusion: an RS256 header over an HMAC made with the server's own secret
    assert reason_of(signer, craft({"alg": "RS256", "typ": "JWT"}, good_claims())) == "algorithm not allowed"
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason_of(signer, jwt.encode(good_claims(), private, algorithm="RS256")) == "algorithm not allowed"


@pytest.mark.parametrize(
    "token", [None, 42, b"abc.def.ghi", ["a"], "", "garbage", "a.b.c", "....", "é.é.é", "a.b.c.d", " " * 10]
)
def test_garbage(signer: TokenSigner, token: Any) -> None:
    reason_of(signer, token)


def test_oversize(signer: TokenSigner) -> None:
    token = signer.issue("s" * 200)
    assert len(token) < MAX_TOKEN_CHARS
    assert reason_of(signer, token + "A" * (MAX_TOKEN_CHARS + 1 - len(token))) == "oversize"


def test_wrong_issuer(signer: TokenSigner, clock: Clock) -> None:
    other = TokenSigner([KEY], issuer="someone-else", now=clock).issue("s")
    assert reason_of(signer, other) == "wrong issuer"


@pytest.mark.parametrize("claim", ["sid", "iat", "exp", "iss", "ver", "jti"])
def test_missing_claim(signer: TokenSigner, claim: str) -> None:
    claims = good_claims()
    del claims[claim]
    assert reason_of(signer, craft({"alg": "HS256", "typ": "JWT"}, claims)) == "missing claim"


@pytest.mark.parametrize(
    "over",
    [
        *({"sid": 5}, {"sid": ""}, {"ver": True}, {"ver": -1}, {"ver": "0"}, {"exp": "later"}, {"iat": [1]}),
        *({"exp": float("nan")}, {"exp": float("inf")}, {"exp": 10**400}, {"iat": int(T0) + 3600}),
    ],
)
def test_signed_but_bad_claims(signer: TokenSigner, over: dict[str, Any]) -> None:
    reason_of(signer, craft({"alg": "HS256", "typ": "JWT"}, good_claims(**over)))


def test_constructor_refuses_weak_configuration() -> None:
    for bad in ([], [b"short"], ["a" * 40], [KEY, b"x"]):
        with pytest.raises(ConfigError):
            TokenSigner(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TokenSigner([KEY], algorithm="RS256")
    with pytest.raises(ConfigError):
        TokenSigner([KEY], ttl=0)
    with pytest.raises(ConfigError):
        TokenSigner([KEY], leeway=-1)


def test_no_token_in_logs(signer: TokenSigner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = signer.issue("s")
    for bad in (token, token[:-2], token + "x", craft({"alg": "none"}, good_claims(), key=None)):
        try:
            signer.verify(bad)
        except InvalidToken as exc:
            assert bad not in repr(exc) and bad not in exc.reason
    assert token[-20:] not in caplog.text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=5000),
        st.from_regex(r"[A-Za-z0-9_\-]{0,60}\.[A-Za-z0-9_\-]{0,60}\.[A-Za-z0-9_\-]{0,60}", fullmatch=True),
        st.tuples(st.binary(max_size=80), st.binary(max_size=80), st.binary(max_size=40)).map(
            lambda parts: ".".join(b64(p) for p in parts)
        ),
    )
)
def test_verify_arbitrary_text_raises_only_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner([KEY], now=Clock()).verify(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.fixed_dictionaries(
        {"alg": st.sampled_from(["HS256", "none", "HS512", "RS256"])},
        optional={"kid": _json, "crit": _json, "typ": _json},
    ),
    payload=st.one_of(
        _json,
        st.fixed_dictionaries({k: _json for k in good_claims()}),
        st.builds(lambda k, v: good_claims(**{k: v}), st.sampled_from(list(good_claims())), _json),
    ),
)
def test_signed_arbitrary_payloads_give_claims_or_invalid_token(header: dict[str, Any], payload: Any) -> None:
    signer = TokenSigner([KEY], now=Clock())
    try:
        claims = signer.verify(craft(header, payload))
    except InvalidToken:
        return
    assert header["alg"] == "HS256" and isinstance(claims.session_id, str) and claims.expires_at > T0


# -- secrets on disk --------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_created_with_mode_0600_and_survives_restart(tmp_path: Path) -> None:
    secrets = load_or_create_secrets(tmp_path)
    assert len(secrets) == 1 and len(secrets[0]) >= 32
    assert mode(tmp_path / "secret.key") == 0o600
    assert len(bytes.fromhex((tmp_path / "secret.key").read_text().strip())) == 32
    token = TokenSigner(secrets).issue("s")
    restarted = TokenSigner(load_or_create_secrets(tmp_path))  # a new process, same data dir
    assert restarted.verify(token).session_id == "s"
    assert not [p.name for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_loose_permissions_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_or_create_secrets(tmp_path)
    os.chmod(tmp_path / "secret.key", 0o644)
    with caplog.at_level(logging.WARNING, logger="sessionactors.auth.tokens"):
        assert load_or_create_secrets(tmp_path) == first
    assert mode(tmp_path / "secret.key") == 0o600
    assert "0600" in caplog.text
    assert first[0].decode() not in caplog.text


def test_configured_secret_wins(tmp_path: Path) -> None:
    configured, old = "c" * 40, "p" * 40
    assert load_or_create_secrets(tmp_path, configured, [old]) == [configured.encode(), old.encode()]
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(ConfigError):
        load_or_create_secrets(tmp_path, "too-short")


def test_corrupt_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("\n")
    os.chmod(tmp_path / "secret.key", 0o600)
    with pytest.raises(ConfigError):
        load_or_create_secrets(tmp_path)


def test_rotation(tmp_path: Path, clock: Clock) -> None:
    old_secrets = load_or_create_secrets(tmp_path)
    old_token = TokenSigner(old_secrets, now=clock).issue("s")
    rotate_secret(tmp_path)
    assert mode(tmp_path / "secret.previous") == 0o600 and mode(tmp_path / "secret.key") == 0o600
    secrets = load_or_create_secrets(tmp_path)
    assert len(secrets) == 2 and secrets[1] == old_secrets[0] and secrets[0] != old_secrets[0]
    signer = TokenSigner(secrets, now=clock)
    assert signer.verify(old_token).session_id == "s"
    new_token = signer.issue("t")
    assert TokenSigner(secrets[:1], now=clock).verify(new_token).session_id == "t"
    assert reason_of(TokenSigner(old_secrets, now=clock), new_token) == "bad signature"
    dropped = TokenSigner(load_or_create_secrets(tmp_path, keep_previous=False), now=clock)
    assert reason_of(dropped, old_token) == "bad signature"
    dropped.verify(new_token)
    rotate_secret(tmp_path)  # only one previous is kept
    assert load_or_create_secrets(tmp_path)[1] == secrets[0]
    assert reason_of(TokenSigner(load_or_create_secrets(tmp_path), now=clock), old_token) == "bad signature"


def _create_secret(data_dir: str, barrier: Any, queue: Any) -> None:
    barrier.wait()
    queue.put(load_or_create_secrets(Path(data_dir))[0])


def test_concurrent_creation_ends_with_one_secret(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_secret, args=(str(tmp_path), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(timeout=20)
        assert p.exitcode == 0
    assert len(set(results)) == 1
    assert results[0] == (tmp_path / "secret.key").read_text().strip().encode()


# -- GitHub -----------------------------------------------------------------------------------

USERS = {"ghp_alice0000000000": (1001, "alice"), "ghp_bob000000000000": (1002, "Bob")}
ALICE, BOB = "ghp_alice0000000000", "ghp_bob000000000000"


@pytest.fixture
def standin() -> Any:
    s = start_standin(USERS, delay=10.0)
    yield s
    s.stop()


def test_valid_user_and_headers(standin: StandIn) -> None:
    assert GitHubVerifier(standin.url).verify(ALICE) == GitHubUser(id="1001", login="alice")
    h = {k.lower(): v for k, v in standin.last_headers.items()}
    assert h["authorization"] == f"Bearer {ALICE}"
    assert h["accept"] == "application/vnd.github+json"
    assert h["x-github-api-version"] == "2022-11-28"
    assert h["user-agent"] == "sessionactors"


def test_bad_credentials(standin: StandIn) -> None:
    with pytest.raises(InvalidGitHubToken) as info:
        GitHubVerifier(standin.url).verify("ghp_unknown00000000")
    assert info.value.error_code == 401 and str(info.value) == "Invalid GitHub token"


@pytest.mark.parametrize("token", [TOKEN_500, TOKEN_502, TOKEN_MALFORMED, TOKEN_RATE_LIMITED])
def test_github_failures_are_unavailable(standin: StandIn, token: str) -> None:
    with pytest.raises(GitHubUnavailable) as info:
        GitHubVerifier(standin.url).verify(token)
    assert str(info.value).startswith("GitHub could not verify the token: ")
    assert info.value.error_code == 503 and token not in str(info.value)


def test_redirect_not_followed(standin: StandIn) -> None:
    with pytest.raises(GitHubUnavailable):
        GitHubVerifier(standin.url).verify(TOKEN_REDIRECT)
    assert standin.count(TOKEN_REDIRECT) == 1 and standin.count("/redirected") == 0


def test_slow_beyond_timeout(standin: StandIn) -> None:
    with pytest.raises(GitHubUnavailable):
        GitHubVerifier(standin.url, timeout=0.3).verify(TOKEN_SLOW)


def test_slow_within_timeout() -> None:
    with start_standin({}, delay=0.05) as s:
        assert GitHubVerifier(s.url, timeout=5).verify(TOKEN_SLOW).login == SLOW_USER[1]


def test_connection_refused() -> None:
    s = start_standin(USERS)
    url = s.url
    s.stop()
    with pytest.raises(GitHubUnavailable):
        GitHubVerifier(url, timeout=2).verify(ALICE)


def test_cache_and_expiry(standin: StandIn, clock: Clock) -> None:
    verifier = GitHubVerifier(standin.url, cache_ttl=60, now=clock)
    assert verifier.verify(ALICE).id == "1001"
    assert verifier.verify(ALICE).id == "1001"
    assert standin.count(ALICE) == 1
    assert ALICE not in repr(verifier._cache)
    assert hashlib.sha256(ALICE.encode()).hexdigest() in verifier._cache
    clock.t += 61
    verifier.verify(ALICE)
    assert standin.count(ALICE) == 2


def test_failures_not_cached(standin: StandIn) -> None:
    verifier = GitHubVerifier(standin.url)
    for _ in range(2):
        with pytest.raises(InvalidGitHubToken):
            verifier.verify("ghp_revoked00000000")
    assert standin.count("ghp_revoked00000000") == 2


def test_allowlist(standin: StandIn) -> None:
    verifier = GitHubVerifier(standin.url, allowlist={"BOB"})
    assert verifier.verify(BOB).login == "Bob"
    with pytest.raises(Forbidden) as info:
        verifier.verify(ALICE)
    assert info.value.error_code == 403 and info.value.reason == "GitHub user not allowed"
    with pytest.raises(Forbidden):
        GitHubVerifier(standin.url, allowlist=set()).verify(BOB)


@pytest.mark.parametrize("token", [None, 7, "", " ", "ghp_a b", "ghp_\n", "x" * 1025, "ghp_é", "\x00"])
def test_malformed_github_token_not_sent(standin: StandIn, token: Any) -> None:
    with pytest.raises(InvalidGitHubToken):
        GitHubVerifier(standin.url).verify(token)
    assert sum(standin.requests.values()) == 0


def fake_get(status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return lambda url, hdrs, timeout: (status, headers or {}, body)


@pytest.mark.parametrize(
    "http_get",
    [
        fake_get(404, b'{"message": "Not Found"}'),
        fake_get(302, b""),
        fake_get(429, b"{}"),
        fake_get(403, b"{}", {"Retry-After": "60"}),
        fake_get(200, b'{"login": "a"}'),
        fake_get(200, b'{"login": "a", "id": true}'),
        fake_get(200, b'{"login": "", "id": 1}'),
        fake_get(200, b"[1, 2]"),
        fake_get(200, b"\xff\xfe"),
        lambda url, hdrs, timeout: (_ for _ in ()).throw(RuntimeError("boom")),
    ],
)
def test_unexpected_answers_are_unavailable(http_get: Any) -> None:
    with pytest.raises(GitHubUnavailable):
        GitHubVerifier(http_get=http_get).verify(ALICE)


def test_plain_403_is_invalid_token() -> None:
    with pytest.raises(InvalidGitHubToken):
        GitHubVerifier(http_get=fake_get(403, b'{"message": "Forbidden"}')).verify(ALICE)


def test_bad_api_url() -> None:
    with pytest.raises(ConfigError):
        GitHubVerifier("ftp://example.com")


def test_no_github_token_in_logs(standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = GitHubVerifier(standin.url, allowlist={"bob"})
    for token in (ALICE, "ghp_unknown00000000", TOKEN_500):
        with pytest.raises((Forbidden, InvalidGitHubToken, GitHubUnavailable)):
            verifier.verify(token)
    for token in (ALICE, "ghp_unknown00000000", TOKEN_500):
        assert token not in caplog.text


def test_load_allowlist(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_text("# team\nAlice\n\n  bob-2  # contractor\n#carol\n")
    assert load_allowlist(path) == {"alice", "bob-2"}
    path.write_text("not a login\n")
    with pytest.raises(ConfigError):
        load_allowlist(path)
    with pytest.raises(ConfigError):
        load_allowlist(tmp_path / "missing.txt")


def test_check_owner() -> None:
    alice, bob = GitHubUser("1001", "alice"), GitHubUser("1002", "bob")
    check_owner(None, None)
    check_owner(None, alice)
    check_owner("1001", alice)
    with pytest.raises(Forbidden):
        check_owner("1001", None)
    with pytest.raises(Forbidden):
        check_owner("1001", bob)
    with pytest.raises(Forbidden):
        check_owner("1001", GitHubUser("1002", "alice"))  # same login, other account


@given(st.text(max_size=100))
def test_redact_never_returns_the_input(value: str) -> None:
    out = redact(value)
    assert out != value
    if len(value) >= 8:
        assert value not in out


def test_redact_examples() -> None:
    assert redact("ghp_" + "x" * 36) == "ghp_…(40 chars)"
    assert redact("short") == "…(5 chars)"
    assert redact("…(11 chars)") != "…(11 chars)"
