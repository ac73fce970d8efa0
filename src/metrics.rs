//! Reading metric series: a shape-preserving downsampler and an in-memory
//! cache so chart reads of long runs do not rescan SQLite.

use crate::store::{Result, Series, Store};
use crate::train::MetricPoint;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// Reduces `s` to at most `max_points` points (at least 2), keeping the first
/// and last point and, for each of `(max_points - 2) / 2` equal-count buckets
/// of the points between, its minimum and its maximum in step order. Spikes
/// survive (unlike taking every n-th point), and the result is deterministic.
pub fn downsample(s: &Series, max_points: usize) -> Series {
    let n = s.len();
    if n <= max_points.max(2) {
        return s.clone();
    }
    let mut keep: Vec<usize> = Vec::with_capacity(max_points);
    keep.push(0);
    let interior = n - 2;
    let buckets = (max_points.saturating_sub(2) / 2).min(interior);
    for b in 0..buckets {
        let lo = 1 + b * interior / buckets;
        let hi = 1 + (b + 1) * interior / buckets;
        let (mut imin, mut imax) = (lo, lo);
        for i in lo..hi {
            // NaN never reaches the store (training fails on non-finite loss),
            // but compare so that one would not be picked as an extreme.
            if s.values[i] < s.values[imin] {
                imin = i;
            }
            if s.values[i] > s.values[imax] {
                imax = i;
            }
        }
        let (a, b2) = if imin <= imax {
            (imin, imax)
        } else {
            (imax, imin)
        };
        keep.push(a);
        if b2 != a {
            keep.push(b2);
        }
    }
    keep.push(n - 1);
    let mut out = Series::default();
    for i in keep {
        out.steps.push(s.steps[i]);
        out.values.push(s.values[i]);
        out.wall_times.push(s.wall_times[i]);
        out.epochs.push(s.epochs[i]);
    }
    out
}

/// Inserts `p` keeping steps sorted and unique (a repeated step replaces).
fn upsert(s: &mut Series, p: &MetricPoint) {
    let pos = match s.steps.last() {
        Some(&last) if p.step > last => s.len(),
        None => 0,
        _ => match s.steps.binary_search(&p.step) {
            Ok(i) => {
                s.values[i] = p.value;
                s.wall_times[i] = p.wall_time;
                s.epochs[i] = p.epoch;
                return;
            }
            Err(i) => i,
        },
    };
    s.steps.insert(pos, p.step);
    s.values.insert(pos, p.value);
    s.wall_times.insert(pos, p.wall_time);
    s.epochs.insert(pos, p.epoch);
}

struct Entry {
    series: Series,
    last_used: u64,
}

/// Whole series held in memory, least recently used evicted beyond
/// `capacity_points`. The writer appends to cached series after each commit;
/// both it and readers hold the lock across a load, so a series loaded from
/// SQLite can only miss points that the writer then appends (idempotently).
pub struct MetricCache {
    entries: Mutex<HashMap<(i64, String), Entry>>,
    clock: AtomicU64,
    capacity_points: usize,
}

impl MetricCache {
    pub fn new(capacity_points: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            capacity_points,
        }
    }

    /// Applies freshly committed points to whichever series are cached.
    pub async fn append(&self, run_id: i64, points: &[MetricPoint]) {
        let mut entries = self.entries.lock().await;
        for p in points {
            if let Some(e) = entries.get_mut(&(run_id, p.key.clone())) {
                upsert(&mut e.series, p);
            }
        }
    }

    /// The series of `key`, downsampled to `max_points` when given.
    pub async fn read(
        &self,
        store: &Store,
        run_id: i64,
        key: &str,
        max_points: Option<usize>,
    ) -> Result<Series> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().await;
        let map_key = (run_id, key.to_string());
        if !entries.contains_key(&map_key) {
            let series = store.read_series(run_id, key).await?;
            entries.insert(
                map_key.clone(),
                Entry {
                    series,
                    last_used: tick,
                },
            );
            self.evict(&mut entries, &map_key);
        }
        let entry = entries.get_mut(&map_key).expect("inserted above");
        entry.last_used = tick;
        Ok(match max_points {
            Some(m) => downsample(&entry.series, m),
            None => entry.series.clone(),
        })
    }

    fn evict(&self, entries: &mut HashMap<(i64, String), Entry>, keep: &(i64, String)) {
        let mut total: usize = entries.values().map(|e| e.series.len()).sum();
        while total > self.capacity_points {
            let oldest = entries
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => total -= entries.remove(&k).map(|e| e.series.len()).unwrap_or(0),
                None => break,
            }
        }
    }

    /// Forgets a run's series (e.g. when it is deleted or rewound).
    pub async fn forget_run(&self, run_id: i64) {
        self.entries.lock().await.retain(|(r, _), _| *r != run_id);
    }

    /// Reads `keys` (or every key of the run) downsampled to `max_points`.
    pub async fn read_many(
        &self,
        store: &Store,
        run_id: i64,
        keys: Option<&[String]>,
        max_points: Option<usize>,
    ) -> Result<std::collections::BTreeMap<String, Series>> {
        let keys = match keys {
            Some(k) => k.to_vec(),
            None => store.metric_keys(run_id).await?,
        };
        let mut out = std::collections::BTreeMap::new();
        for key in keys {
            let s = self.read(store, run_id, &key, max_points).await?;
            out.insert(key, s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Series {
        Series {
            steps: (0..values.len() as i64).map(|i| i * 10).collect(),
            values: values.to_vec(),
            wall_times: (0..values.len()).map(|i| i as f64).collect(),
            epochs: vec![0; values.len()],
        }
    }

    #[test]
    fn short_series_is_returned_whole() {
        let s = series(&[1.0, 2.0, 3.0]);
        assert_eq!(downsample(&s, 10), s);
    }

    #[test]
    fn downsampling_keeps_each_buckets_extremes_and_the_ends() {
        // 1002 points: a flat line with one spike up and one spike down that
        // every-n-th sampling would miss.
        let mut v = vec![0.0; 1002];
        v[333] = 50.0;
        v[777] = -40.0;
        v[1001] = 3.0;
        let s = series(&v);
        let d = downsample(&s, 100);
        assert!(d.len() <= 100, "{} points", d.len());
        assert!(d.values.contains(&50.0), "lost the spike");
        assert!(d.values.contains(&-40.0), "lost the dip");
        assert_eq!(d.steps[0], 0);
        assert_eq!(*d.steps.last().unwrap(), 10010);
        assert_eq!(*d.values.last().unwrap(), 3.0);
        assert!(d.steps.windows(2).all(|w| w[0] < w[1]), "order not kept");
    }

    #[test]
    fn every_bucket_contributes_its_min_and_max() {
        // 2 + 4 buckets * 5 points; each bucket holds a distinct min and max.
        let mut v = vec![0.0];
        for b in 0..4 {
            let base = b as f64 * 100.0;
            v.extend([base + 1.0, base + 9.0, base + 5.0, base - 9.0, base + 2.0]);
        }
        v.push(0.0);
        let d = downsample(&series(&v), 10);
        for b in 0..4 {
            let base = b as f64 * 100.0;
            assert!(
                d.values.contains(&(base + 9.0)),
                "bucket {b} max missing: {:?}",
                d.values
            );
            assert!(
                d.values.contains(&(base - 9.0)),
                "bucket {b} min missing: {:?}",
                d.values
            );
        }
        assert_eq!(d.len(), 10);
    }

    #[test]
    fn upsert_keeps_steps_unique_and_sorted() {
        let mut s = Series::default();
        let p = |step, value| MetricPoint {
            key: "k".into(),
            step,
            epoch: 0,
            value,
            wall_time: 0.0,
        };
        for (st, v) in [(5, 1.0), (10, 2.0), (5, 3.0), (7, 4.0), (20, 5.0)] {
            upsert(&mut s, &p(st, v));
        }
        assert_eq!(s.steps, vec![5, 7, 10, 20]);
        assert_eq!(s.values, vec![3.0, 4.0, 2.0, 5.0]);
    }
}
