//! Evaluates the rules of one batch on several threads. A rule's state belongs to that rule
//! alone, so rules need no locks between them: each rule runs on one thread, writes its
//! alerts to its own list, and the lists are joined in rule order, so the output is exactly
//! what one thread gives. Rules are spread so that each thread gets about the same measured
//! cost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

/// Whether a thread that could not be started was reported already.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Items one thread runs, each with its index.
type Group<'a, T> = Vec<(usize, &'a mut T)>;

/// Runs `each` on every item, on up to `threads` threads (the calling thread is one of them),
/// and returns the items' outputs in item order. Items are spread over the threads by their
/// `cost`, largest first onto the least loaded thread. A thread that cannot be started leaves
/// its items to the calling thread.
pub(crate) fn run_spread<T, O>(
    items: &mut [T],
    threads: usize,
    cost: impl Fn(&T) -> u64,
    each: impl Fn(&mut T) -> O + Sync,
) -> Vec<O>
where
    T: Send,
    O: Send,
{
    let items_len = items.len();
    let threads = threads.clamp(1, items_len.max(1));
    if threads == 1 {
        return items.iter_mut().map(each).collect();
    }
    let mut groups = spread(items, threads, cost).into_iter();
    let own = groups.next().unwrap_or_default();
    // Each other group waits here until its thread takes it, so that a thread that does not
    // start leaves its group behind for the calling thread.
    let hand_offs: Vec<Mutex<Option<Group<'_, T>>>> = groups.map(|g| Mutex::new(Some(g))).collect();
    let mut outputs: Vec<(usize, O)> = Vec::with_capacity(items_len);
    thread::scope(|scope| {
        let each = &each;
        let run = move |group: Group<'_, T>| -> Vec<(usize, O)> {
            group.into_iter().map(|(i, item)| (i, each(item))).collect()
        };
        let mut handles = Vec::new();
        let mut unstarted = Vec::new();
        for hand_off in &hand_offs {
            let started = thread::Builder::new()
                .name("verity-rules".into())
                .spawn_scoped(scope, move || run(take(hand_off)));
            match started {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    // Once per process: a limit that stops one thread stops it on every batch.
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, "could not start a rules thread; its rules run on the calling one");
                    }
                    unstarted.push(take(hand_off));
                }
            }
        }
        outputs.extend(run(own));
        for group in unstarted {
            outputs.extend(run(group));
        }
        for handle in handles {
            match handle.join() {
                Ok(part) => outputs.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    outputs.sort_unstable_by_key(|(i, _)| *i);
    outputs.into_iter().map(|(_, o)| o).collect()
}

fn take<G: Default>(hand_off: &Mutex<Option<G>>) -> G {
    hand_off
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default()
}

/// `items` in `threads` groups of about equal cost, each item with its index.
fn spread<T>(items: &mut [T], threads: usize, cost: impl Fn(&T) -> u64) -> Vec<Group<'_, T>> {
    let costs: Vec<u64> = items.iter().map(|t| cost(t).saturating_add(1)).collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Largest first; equal costs in item order, so the spread is the same on every run.
    order.sort_by_key(|&i| (std::cmp::Reverse(costs.get(i).copied().unwrap_or(0)), i));
    let mut load = vec![0u64; threads];
    let mut group_of = vec![0usize; items.len()];
    for i in order {
        let (least, _) = load.iter().enumerate().min_by_key(|&(g, l)| (*l, g)).unwrap_or((0, &0));
        if let (Some(l), Some(g)) = (load.get_mut(least), group_of.get_mut(i)) {
            *l = l.saturating_add(costs.get(i).copied().unwrap_or(0));
            *g = least;
        }
    }
    let mut groups: Vec<Group<'_, T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.iter_mut().enumerate() {
        if let Some(group) = group_of.get(i).and_then(|&g| groups.get_mut(g)) {
            group.push((i, item));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_back_in_item_order_whatever_the_threads() {
        for threads in [1, 2, 3, 8, 40] {
            let mut items: Vec<u64> = (0..20).collect();
            let out = run_spread(
                &mut items,
                threads,
                |&c| c * 7 % 5,
                |x| {
                    *x += 100;
                    *x * 2
                },
            );
            assert_eq!(
                out,
                (0..20).map(|x| (x + 100) * 2).collect::<Vec<_>>(),
                "{threads} threads"
            );
            assert_eq!(items, (100..120).collect::<Vec<_>>(), "{threads} threads");
        }
    }

    #[test]
    fn items_are_spread_by_cost() {
        let mut items = vec![10u64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let groups = spread(&mut items, 2, |&c| c);
        let loads: Vec<u64> = groups.iter().map(|g| g.iter().map(|(_, c)| **c + 1).sum()).collect();
        // 11 + ten times 2: the heavy item alone on one thread, then the light ones evened
        // out, so the loads differ by at most one light item.
        assert_eq!(loads.iter().sum::<u64>(), 31);
        assert!(
            loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0) <= 2,
            "{loads:?}"
        );
        let mut equal = vec![0u64; 6];
        let groups = spread(&mut equal, 3, |&c| c);
        assert!(groups.iter().all(|g| g.len() == 2));
    }

    #[test]
    fn no_items_and_more_threads_than_items() {
        let mut none: Vec<u8> = Vec::new();
        assert!(run_spread(&mut none, 4, |_| 0, |x| *x).is_empty());
        let mut one = vec![5u8];
        assert_eq!(run_spread(&mut one, 4, |_| 0, |x| *x), vec![5]);
    }
}
