//! A pyABC results database (SQLite) as the tests read and prepare it, with the pinned Python.

use super::python::{entrypoint, python_script};
use abc_operator::protocol::inference::GenerationRecord;
use std::path::Path;

/// `(t, evaluations)` of every generation stored in a pyABC database.
pub fn stored_generations(db: &Path) -> Vec<(i64, i64)> {
    let out = python_script(
        "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
         print(json.dumps(c.execute('select t, nr_samples from populations \
         where t >= 0 order by t').fetchall()))",
        &[db],
    );
    serde_json::from_slice(&out).unwrap()
}

/// The records of every generation of the newest run in a pyABC database, as the shipped
/// `abc_operator` module computes them from the database (`generation_records`): what its
/// list of generation records holds after a master's start.
pub fn generation_records(db: &Path) -> Vec<GenerationRecord> {
    let module_dir = entrypoint().parent().unwrap();
    let out = python_script(
        "import json, sys; sys.path.insert(0, sys.argv[2]); import abc_operator, pyabc\n\
         history = pyabc.History('sqlite:///' + sys.argv[1])\n\
         history.id = max(run.id for run in history.all_runs())\n\
         print(json.dumps(abc_operator.generation_records(history)))\n",
        &[db, module_dir],
    );
    let texts: Vec<String> = serde_json::from_slice(&out).unwrap();
    texts
        .iter()
        .map(|text| GenerationRecord::parse(text.as_bytes()).unwrap())
        .collect()
}

/// `History.max_t` of a pyABC database, as pyABC itself reads it (the last generation stored).
pub fn history_max_t(db: &Path) -> i64 {
    let out = python_script(
        "import sys, pyabc; print(pyabc.History('sqlite:///' + sys.argv[1]).max_t)",
        &[db],
    );
    String::from_utf8(out).unwrap().trim().parse().unwrap()
}

/// SQLite's `integrity_check` of a database: `ok` when every page and index is whole.
pub fn integrity(db: &Path) -> String {
    let out = python_script(
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])",
        &[db],
    );
    String::from_utf8(out).unwrap().trim().to_string()
}

/// A results database holding an unfinished run of other observed data (`y = 7`, two
/// generations of 20), as another model's run that was killed would leave it.
pub fn database_of_another_run(db: &Path) {
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    python_script(
        "import sqlite3, sys, numpy as np, pyabc\n\
         from pyabc.sampler import SingleCoreSampler\n\
         abc = pyabc.ABCSMC(lambda p: {'y': p['mu'] + np.random.randn()},\n\
             pyabc.Distribution(mu=pyabc.RV('uniform', -5, 10)),\n\
             lambda x, x0: abs(x['y'] - x0['y']), population_size=20,\n\
             sampler=SingleCoreSampler())\n\
         abc.new('sqlite:///' + sys.argv[1], {'y': 7.0})\n\
         abc.run(max_nr_populations=2)\n\
         c = sqlite3.connect(sys.argv[1])\n\
         c.execute('update abc_smc set end_time = NULL')\n\
         c.commit()\n",
        &[db],
    );
}

/// The number of rows of every table of an SQLite database, by table.
pub fn row_counts(db: &Path) -> Vec<(String, i64)> {
    let out = python_script(
        "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
         names = [r[0] for r in c.execute(\"select name from sqlite_master where type = 'table' order by name\")]; \
         print(json.dumps([[n, c.execute(f'select count(*) from \"{n}\"').fetchone()[0]] for n in names]))",
        &[db],
    );
    serde_json::from_slice(&out).unwrap()
}
