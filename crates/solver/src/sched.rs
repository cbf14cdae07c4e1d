//! Runs a DAG of jobs (the stages of a build) on at most `jobs` threads:
//! a job starts when every job it depends on has finished, and the first
//! failure stops new jobs from starting.

use std::sync::{Arc, Condvar, Mutex};

/// Runs `run(i, results_of_deps)` for every job `i` in `0..deps.len()`,
/// where `deps[i]` lists the jobs `i` needs (all with smaller indices: stages
/// only reference earlier stages). `want[i]` false skips a job. Returns each
/// job's result (`None` for skipped ones), or the first error.
pub fn run_dag<T, E, F>(
    deps: &[Vec<usize>],
    want: &[bool],
    jobs: usize,
    run: F,
) -> Result<Vec<Option<Arc<T>>>, E>
where
    T: Send + Sync,
    E: Send,
    F: Fn(usize, &[Arc<T>]) -> Result<T, E> + Sync,
{
    let n = deps.len();
    struct State<T, E> {
        results: Vec<Option<Arc<T>>>,
        started: Vec<bool>,
        running: usize,
        error: Option<E>,
    }
    let state = Mutex::new(State::<T, E> {
        results: (0..n).map(|_| None).collect(),
        started: want.iter().map(|w| !w).collect(),
        running: 0,
        error: None,
    });
    let wake = Condvar::new();
    let jobs = jobs.max(1).min(n.max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                // Pick a ready job, or stop when nothing is left to start.
                let (i, inputs): (usize, Vec<Arc<T>>) = {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if st.error.is_some() || st.started.iter().all(|s| *s) {
                            return;
                        }
                        let ready = (0..n).find(|&i| {
                            !st.started[i] && deps[i].iter().all(|&d| st.results[d].is_some())
                        });
                        match ready {
                            Some(i) => {
                                st.started[i] = true;
                                st.running += 1;
                                let inputs = deps[i]
                                    .iter()
                                    .filter_map(|&d| st.results[d].clone())
                                    .collect();
                                break (i, inputs);
                            }
                            None if st.running == 0 => {
                                // Nothing runs and nothing is ready: a wanted job
                                // depends on one that is not wanted.
                                return;
                            }
                            None => st = wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                        }
                    }
                };
                let out = run(i, &inputs);
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.running -= 1;
                match out {
                    Ok(v) => st.results[i] = Some(Arc::new(v)),
                    Err(e) => {
                        if st.error.is_none() {
                            st.error = Some(e);
                        }
                    }
                }
                wake.notify_all();
            });
        }
    });
    let st = state.into_inner().unwrap_or_else(|e| e.into_inner());
    match st.error {
        Some(e) => Err(e),
        None => Ok(st.results),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_in_dependency_order_and_skips_unwanted() {
        // 0 and 1 independent, 2 needs both, 3 unwanted.
        let deps = vec![vec![], vec![], vec![0, 1], vec![0]];
        let want = vec![true, true, true, false];
        let ran = AtomicUsize::new(0);
        let out = run_dag(&deps, &want, 2, |i, inputs: &[Arc<usize>]| {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<usize, String>(i * 10 + inputs.iter().map(|v| **v).sum::<usize>())
        })
        .unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert_eq!(out[2].as_deref(), Some(&(20 + 10)));
        assert!(out[3].is_none());
    }

    #[test]
    fn independent_jobs_overlap_with_two_workers() {
        // Job 0 waits until job 1 has started: only possible when both run
        // at the same time. A barrier makes this deterministic.
        let barrier = std::sync::Barrier::new(2);
        let out = run_dag(&[vec![], vec![]], &[true, true], 2, |_, _: &[Arc<()>]| {
            barrier.wait();
            Ok::<(), ()>(())
        });
        assert!(out.is_ok());
    }

    #[test]
    fn first_error_stops_dependents() {
        let deps = vec![vec![], vec![0]];
        let ran = AtomicUsize::new(0);
        let out = run_dag(&deps, &[true, true], 1, |i, _: &[Arc<()>]| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 0 {
                Err("boom")
            } else {
                Ok(())
            }
        });
        assert_eq!(out.unwrap_err(), "boom");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
