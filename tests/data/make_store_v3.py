"""Make tests/data/store-v3.tar.gz: a data dir written by the schema 3 code (sharded).

Run with the schema 3 sources first on the path, as it was made::

    mkdir /tmp/v3code && git archive 2dedd36 sessionactors | tar -x -C /tmp/v3code
    python tests/data/make_store_v3.py tests/data/store-v3.tar.gz /tmp/v3code
"""

import json
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, sys.argv[2])
from sessionactors.store import SessionRecord
from sessionactors.store.sqlite import SCHEMA_VERSION, SQLiteStore

assert SCHEMA_VERSION == 3


def ev(i, sid):
    return {
        "id": i,
        "timestamp": f"2026-11-29T10:00:{i % 60:02d}.123456+00:00",
        "source": "environment",
        "observation": "run",
        "cause": i - 1,
        "content": f"{sid} out {i} \u00e9\u2603 " * (i * 37 % 40),
        "extras": {"command": f"echo {i}", "exit_code": i % 3},
    }


counts = {"plain": 10, "weird/../id \u00e9": 3, "big": 2000, "one": 1}
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp) / "data"
    s = SQLiteStore(data)
    for n, sid in enumerate([*counts, "no-events"]):
        s.create_session(
            SessionRecord(
                sid,
                owner=str(n),
                owner_login=f"u{n}",
                args={"n": n},
                created_at=float(n),
                last_active=float(n) + 0.5,
                state=["live", "passivated", "failed"][n % 3],
                runtime_state={"cwd": f"/w/{n}"},
                token_version=n,
            )
        )
    for sid, count in counts.items():
        for start in range(0, count, 300):
            s.append(sid, [ev(i, sid) for i in range(start, min(count, start + 300))])
    s.append("orphan", [ev(0, "orphan")])  # events before (without) a record: allowed
    s.close()
    expected = {sid: [ev(i, sid) for i in range(c)] for sid, c in {**counts, "orphan": 1}.items()}
    (Path(tmp) / "expected.json").write_text(json.dumps(expected))
    out = Path(sys.argv[1])
    with tarfile.open(out, "w:gz") as tar:
        tar.add(data, arcname="data")
        tar.add(Path(tmp) / "expected.json", arcname="expected.json")
print(out.stat().st_size)
