//! Retention and the disk quota: whole partitions are deleted, oldest first.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::time::days_from_civil;

/// The end of a partition's time range (seconds since the epoch), from its `date=`/`hour=` path.
pub(super) fn partition_end(dir: &Path) -> Option<i64> {
    let mut date = None;
    let mut hour = None;
    for part in dir.components() {
        let part = part.as_os_str().to_str()?;
        if let Some(d) = part.strip_prefix("date=") {
            let mut it = d.split('-');
            let (y, m, dd) = (
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            );
            date = Some(days_from_civil(y, m, dd));
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = Some(h.parse::<i64>().ok()?);
        }
    }
    let day_start = date? * 86_400;
    Some(match hour {
        Some(h) => day_start + (h + 1) * 3600,
        None => day_start + 86_400,
    })
}

struct Partition {
    dir: PathBuf,
    end: i64,
    files: Vec<(PathBuf, u64)>,
}

fn partitions(root: &Path, out: &mut Vec<Partition>) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut files = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            partitions(&path, out);
        } else if path.extension().is_some_and(|x| x == "parquet") {
            files.push((path, meta.len()));
        }
    }
    if !files.is_empty()
        && let Some(end) = partition_end(root)
    {
        out.push(Partition {
            dir: root.to_path_buf(),
            end,
            files,
        });
    }
}

/// Deletes partitions under `dir/root` older than `retention`, then the oldest until the
/// stream's files fit `max_bytes`. Partitions with an open file are kept. Returns files deleted.
pub fn enforce(
    dir: &Path,
    root: &Path,
    retention: Option<Duration>,
    max_bytes: Option<u64>,
    open: &[PathBuf],
) -> usize {
    let mut found = Vec::new();
    partitions(&dir.join(root), &mut found);
    found.sort_by_key(|p| p.end);
    let is_open = |p: &Partition| open.iter().any(|o| dir.join(o) == p.dir);
    let now = crate::time::now_us() / 1_000_000;
    let mut deleted = 0;
    let mut total: u64 = found.iter().flat_map(|p| p.files.iter().map(|f| f.1)).sum();
    for p in &found {
        if is_open(p) {
            continue;
        }
        let expired = retention.is_some_and(|r| p.end + (r.as_secs() as i64) < now);
        let over = max_bytes.is_some_and(|m| total > m);
        if !(expired || over) {
            continue;
        }
        for (file, size) in &p.files {
            if fs::remove_file(file).is_ok() {
                deleted += 1;
                total = total.saturating_sub(*size);
            }
        }
        let _ = fs::remove_dir(&p.dir);
        tracing::info!(partition = %p.dir.display(), expired, over_quota = over, "deleted a log partition");
    }
    deleted
}

/// Removes `.<uuid>.parquet` files left by a crash (their rows are in the write-ahead log),
/// except `busy` ones (files being written now).
pub fn remove_stale_temp_files(root: &Path, busy: &[PathBuf]) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if busy.contains(&path) {
            continue;
        }
        if path.is_dir() {
            remove_stale_temp_files(&path, busy);
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".parquet"))
        {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::civil_from_days;

    #[test]
    fn dates_round_trip() {
        for days in [-800, -1, 0, 59, 11_016, 20_786, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let end = partition_end(Path::new("predictions/model=m/date=1970-01-02/hour=03")).unwrap();
        assert_eq!(end, 86_400 + 4 * 3600);
        assert_eq!(
            partition_end(Path::new("feedback/date=1970-01-01")),
            Some(86_400)
        );
    }

    #[test]
    fn quota_and_retention_delete_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Path::new("predictions/model=m");
        let now_days = crate::time::now_us() / 86_400_000_000;
        let mut dirs = Vec::new();
        for back in [10, 2, 1] {
            let (y, m, d) = civil_from_days(now_days - back);
            let dir = tmp
                .path()
                .join(root)
                .join(format!("date={y:04}-{m:02}-{d:02}/hour=00"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("a.parquet"), vec![0u8; 1000]).unwrap();
            dirs.push(dir);
        }
        // Retention of 5 days removes the 10-day-old partition only.
        let n = enforce(
            tmp.path(),
            root,
            Some(Duration::from_secs(5 * 86_400)),
            None,
            &[],
        );
        assert_eq!(n, 1);
        assert!(!dirs[0].exists() && dirs[1].exists() && dirs[2].exists());
        // A 1500-byte quota removes the older of the two left.
        let n = enforce(tmp.path(), root, None, Some(1500), &[]);
        assert_eq!(n, 1);
        assert!(!dirs[1].exists() && dirs[2].exists());
    }
}
