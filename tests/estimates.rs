//! The label-free accuracy estimates on shifts the correctness model's fit never saw, through
//! `shiftwatch estimates` (the debug binary): `scripts/estimates_table.py --check` makes the
//! shifted folders (scripts/make_unseen_shifts.py), runs both bundled models and fails unless
//! the targets hold (see the script's docs): the served estimate's error on never-seen shifts,
//! on normal traffic, the overconfidence verdict, BBSE's class mix and the class-mix reading of
//! the class-prior shift.

use std::process::Command;

use crate::support::{python, repo};

#[test]
fn label_free_estimates_meet_their_targets_on_shifts_the_fit_never_saw() {
    let shifts = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .arg(repo().join("scripts/estimates_table.py"))
        .args(["--binary", env!("CARGO_BIN_EXE_shiftwatch")])
        .args(["--windows", "5", "--check"])
        .arg("--shifts")
        .arg(shifts.path())
        .current_dir(repo())
        .output()
        .expect("running scripts/estimates_table.py (make venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all targets met"), "{stdout}");
    // Both models, every group.
    for row in ["| default | unseen |", "| overconfident | holdout |"] {
        assert!(stdout.contains(row), "{row} missing: {stdout}");
    }
}
