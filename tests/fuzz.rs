//! The fuzz targets' inputs replayed in `make test`: every committed seed and every input that
//! once crashed a target (fuzz/regressions/<target>/) must now pass through it without a panic.
//! The fuzzing itself is `make fuzz` (README, "Fuzzing").

use std::path::PathBuf;

use crate::support::repo;

fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = repo().join("fuzz").join(folder).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn every_seed_and_past_crash_passes_through_its_target() {
    let mut replayed = Vec::new();
    for (target, run) in shiftwatch::fuzz::TARGETS {
        let seeds = inputs("seeds", target);
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{target} is empty (fuzz/make_seeds.py writes it)"
        );
        let crashes = inputs("regressions", target);
        for file in seeds.iter().chain(&crashes) {
            let data = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", file.display());
        }
        replayed.push(format!(
            "{target}: {} seeds, {} past crashes",
            seeds.len(),
            crashes.len()
        ));
    }
    println!("{}", replayed.join("; "));
}

#[test]
fn the_image_seeds_decode_so_the_fuzzer_starts_from_real_images() {
    let limits = shiftwatch::preprocess::DecodeLimits {
        max_width: 4096,
        max_height: 4096,
        max_pixels: 4_000_000,
        max_alloc_bytes: 64 << 20,
        decode_budget_bytes: 256 << 20,
        decode_wait: std::time::Duration::ZERO,
    };
    for file in inputs("seeds", "image") {
        let data = std::fs::read(&file).unwrap();
        let decoded = shiftwatch::preprocess::decode(&data[1..], None, &limits);
        assert!(decoded.is_ok(), "{}: {:?}", file.display(), decoded.err());
    }
}
