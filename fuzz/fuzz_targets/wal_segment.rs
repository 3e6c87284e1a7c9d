#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shiftwatch::fuzz::wal_segment(data));
