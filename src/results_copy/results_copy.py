"""The copy pod's side of `kubectl abc results`: run inside the AbcRun's own image.

    python -c SCRIPT wait SECONDS        the pod's main process: sleeps; SIGTERM ends it at once
    python -c SCRIPT list FOLDER         the *.db files in FOLDER, as JSON [{name, size}]
    python -c SCRIPT backup SOURCE COPY SECONDS
                                         a consistent copy of the SQLite database SOURCE at COPY
                                         (SQLite's online backup), and a JSON report of it
    python -c SCRIPT stream FILE         FILE's bytes on stdout

The backup reads SOURCE in steps of STEP_PAGES pages, each under a shared lock held for that
step only, so the master that writes SOURCE waits for one step at most (pyABC's SQLite busy
timeout is 5 s). A commit of the master between two steps restarts the backup from the start
(SQLite does that itself): the copy is always one committed state, never a torn file. A step
that meets the master's lock waits for it (BUSY_TIMEOUT, then the backup's own retries); after
SECONDS in all the backup gives up.

SOURCE is opened read-only (`mode=ro`): nothing of it is written. Only when a master was
killed inside a transaction is its journal "hot", and SQLite must roll the transaction back
before anything can read the database; a read-only connection cannot, so then SOURCE is opened
read-write once, which rolls it back exactly as the master's next start would have.
"""

import hashlib
import json
import os
import signal
import sqlite3
import sys
import time
import urllib.parse

STEP_PAGES = 256
BUSY_TIMEOUT = 10.0


def wait(seconds):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(float(seconds))


def list_databases(folder):
    found = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".db") and entry.is_file(follow_symlinks=False):
            found.append({"name": entry.name, "size": entry.stat().st_size})
    print(json.dumps(sorted(found, key=lambda f: f["name"])))


class TooSlow(Exception):
    pass


def backup_once(source, copy, mode, deadline, state):
    """One backup of SOURCE into a new COPY; counts SQLite's restarts in state."""
    if os.path.exists(copy):
        os.remove(copy)
    remaining = [None]

    def progress(status, left, total):
        if remaining[0] is not None and left > remaining[0]:
            state["restarts"] += 1
        remaining[0] = left
        if time.monotonic() > deadline:
            raise TooSlow(
                f"the database kept changing or stayed locked: {state['restarts']} restarts"
            )

    uri = "file:" + urllib.parse.quote(source) + "?mode=" + mode
    src = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst, pages=STEP_PAGES, progress=progress, sleep=0.1)
        # One self-contained file, whatever the journal mode of the source.
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"the copy fails SQLite's quick_check: {check}")
    finally:
        dst.close()
        src.close()


def count(db, sql):
    try:
        return db.execute(sql).fetchone()[0]
    except sqlite3.DatabaseError:
        return None


def backup(source, copy, seconds):
    started = time.monotonic()
    deadline = started + float(seconds)
    state = {"restarts": 0}
    mode = "ro"
    rolled_back = False
    while True:
        try:
            backup_once(source, copy, mode, deadline, state)
            break
        except TooSlow as err:
            sys.exit(f"no consistent copy of {source} within {seconds} s: {err}")
        except sqlite3.OperationalError as err:
            name = getattr(err, "sqlite_errorname", "")
            if name == "SQLITE_READONLY_ROLLBACK" and mode == "ro":
                mode, rolled_back = "rw", True
                continue
            locked = name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(err)
            if locked and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise
    db = sqlite3.connect("file:" + urllib.parse.quote(copy) + "?mode=ro", uri=True)
    try:
        generations = count(db, "SELECT count(*) FROM populations WHERE t >= 0")
        analyses = count(db, "SELECT count(*) FROM abc_smc")
    finally:
        db.close()
    digest = hashlib.sha256()
    with open(copy, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    print(
        json.dumps(
            {
                "name": os.path.basename(source),
                "size": os.path.getsize(copy),
                "sha256": digest.hexdigest(),
                "generations": generations,
                "analyses": analyses,
                "restarts": state["restarts"],
                "rolledBack": rolled_back,
                "seconds": round(time.monotonic() - started, 3),
            }
        )
    )


def stream(path):
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
    out.flush()


def main(argv):
    commands = {"wait": wait, "list": list_databases, "backup": backup, "stream": stream}
    if not argv or argv[0] not in commands:
        sys.exit(f"usage: {' | '.join(commands)} ARGS")
    commands[argv[0]](*argv[1:])


main(sys.argv[1:])
