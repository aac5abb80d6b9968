//! A shard's replay buffer: the most recent dispatches, by index, so a
//! client that resumes gets exactly what it missed.

use crate::protocol::dispatch::Dispatch;
use std::{collections::VecDeque, rc::Rc};

/// Recent dispatches of one shard, bounded in count and bytes.
#[derive(Debug)]
pub struct ReplayBuffer {
    events: VecDeque<Rc<Dispatch>>,
    /// Index of `events[0]`.
    first: u64,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl ReplayBuffer {
    /// A buffer keeping at most `max_events` dispatches and `max_bytes` of payload.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self { events: VecDeque::new(), first: 0, bytes: 0, max_events, max_bytes }
    }

    /// A buffer holding `events`, the first of which has index `first`.
    pub fn restore(max_events: usize, max_bytes: usize, first: u64, events: Vec<Dispatch>) -> Self {
        let mut b = Self::new(max_events, max_bytes);
        b.first = first;
        for mut d in events {
            d.set_index(b.next_index());
            b.bytes += d.heap_bytes();
            b.events.push_back(Rc::new(d));
        }
        b
    }

    /// Index the next pushed dispatch gets.
    pub fn next_index(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// Index of the oldest dispatch kept.
    pub fn first_index(&self) -> u64 {
        self.first
    }

    /// Number of dispatches kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Payload bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Indexes and stores a dispatch, evicting the oldest beyond the bounds.
    pub fn push(&mut self, mut dispatch: Dispatch) -> Rc<Dispatch> {
        dispatch.set_index(self.next_index());
        let dispatch = Rc::new(dispatch);
        if self.max_events == 0 {
            self.first += 1;
            return dispatch;
        }
        self.bytes += dispatch.heap_bytes();
        self.events.push_back(dispatch.clone());
        while self.events.len() > self.max_events || (self.bytes > self.max_bytes && self.events.len() > 1) {
            let old = self.events.pop_front().expect("non-empty");
            self.bytes -= old.heap_bytes();
            self.first += 1;
        }
        dispatch
    }

    /// Indexes a dispatch without keeping it, dropping everything kept:
    /// used while no client session exists, since nobody could resume into it.
    pub fn push_unretained(&mut self, mut dispatch: Dispatch) -> Rc<Dispatch> {
        dispatch.set_index(self.next_index());
        self.first = self.next_index() + 1;
        self.events.clear();
        self.bytes = 0;
        Rc::new(dispatch)
    }

    /// The dispatch at `index`, if still kept.
    pub fn get(&self, index: u64) -> Option<&Rc<Dispatch>> {
        let offset = index.checked_sub(self.first)?;
        self.events.get(usize::try_from(offset).ok()?)
    }

    /// Dispatches from `index` on.
    pub fn since(&self, index: u64) -> impl Iterator<Item = &Rc<Dispatch>> {
        let skip = index.saturating_sub(self.first) as usize;
        self.events.iter().skip(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u64) -> Dispatch {
        Dispatch::build("X", format!("{{\"n\":{n}}}").as_bytes())
    }

    #[test]
    fn indexes_and_evicts() {
        let mut b = ReplayBuffer::new(3, usize::MAX);
        for n in 0..5 {
            assert_eq!(b.push(d(n)).index(), Some(n));
        }
        assert_eq!((b.first_index(), b.next_index(), b.len()), (2, 5, 3));
        assert!(b.get(1).is_none());
        assert_eq!(b.get(4).unwrap().index(), Some(4));
        assert_eq!(b.since(3).map(|d| d.index().unwrap()).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn unretained_pushes_keep_counting() {
        let mut b = ReplayBuffer::new(10, usize::MAX);
        b.push(d(0));
        assert_eq!(b.push_unretained(d(1)).index(), Some(1));
        assert_eq!((b.len(), b.first_index(), b.next_index()), (0, 2, 2));
        assert_eq!(b.push(d(2)).index(), Some(2));
        assert_eq!(b.get(2).unwrap().index(), Some(2));
    }

    #[test]
    fn byte_bound_and_disabled() {
        let mut b = ReplayBuffer::new(100, 60);
        for n in 0..10 {
            b.push(d(n));
        }
        assert!(b.bytes() <= 60 && !b.is_empty());
        let mut off = ReplayBuffer::new(0, 0);
        off.push(d(0));
        assert_eq!((off.len(), off.next_index()), (0, 1));
    }
}
