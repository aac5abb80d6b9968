//! A shard's replay buffer: the recent dispatches a client session may
//! still need, by index, so a client that resumes gets exactly what it
//! missed. Every shard of a core draws on one memory budget (the core's
//! share of `replay_memory`), kept by a [`ReplayLedger`]: beyond it the
//! core's oldest retained dispatches are dropped, whichever shard they
//! belong to, and a RESUME that needed them is refused (op 9) rather than
//! answered with a gap.

use crate::protocol::dispatch::Dispatch;
use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    rc::{Rc, Weak},
};

/// Dispatches kept before each session's position: what a connection can
/// have had in flight (socket buffers at both ends) when it dropped.
pub const REPLAY_TAIL: u64 = 1024;

/// Recent dispatches of one shard, bounded in count and bytes, and by the
/// core's budget through its ledger.
#[derive(Debug)]
pub struct ReplayBuffer {
    events: VecDeque<Rc<Dispatch>>,
    /// Index of `events[0]`.
    first: u64,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    ledger: Option<(Rc<ReplayLedger>, u32)>,
}

impl ReplayBuffer {
    /// A buffer keeping at most `max_events` dispatches and `max_bytes` of payload.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self { events: VecDeque::new(), first: 0, bytes: 0, max_events, max_bytes, ledger: None }
    }

    /// Puts back `events` read from the state file, the first of which has index `first`.
    pub fn restore(&mut self, first: u64, events: Vec<Dispatch>) {
        self.clear();
        self.first = first;
        for d in events {
            self.push(d);
        }
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

    /// Indexes and stores a dispatch, evicting the oldest beyond the per-shard bounds.
    pub fn push(&mut self, mut dispatch: Dispatch) -> Rc<Dispatch> {
        let index = self.next_index();
        dispatch.set_index(index);
        let dispatch = Rc::new(dispatch);
        if self.max_events == 0 {
            self.first += 1;
            return dispatch;
        }
        let size = dispatch.heap_bytes();
        self.bytes += size;
        self.events.push_back(dispatch.clone());
        if let Some((ledger, slot)) = &self.ledger {
            ledger.add(*slot, index, size);
        }
        while self.events.len() > self.max_events || (self.bytes > self.max_bytes && self.events.len() > 1) {
            self.pop_front();
        }
        dispatch
    }

    /// Indexes a dispatch without keeping it, dropping everything kept:
    /// used while no client session exists, since nobody could resume into it.
    pub fn push_unretained(&mut self, mut dispatch: Dispatch) -> Rc<Dispatch> {
        dispatch.set_index(self.next_index());
        self.clear();
        self.first += 1;
        Rc::new(dispatch)
    }

    /// Drops what comes before index `floor` (no session can need it).
    pub fn trim_before(&mut self, floor: u64) {
        while self.first < floor && !self.events.is_empty() {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.events.pop_front() {
            let size = old.heap_bytes();
            self.bytes -= size;
            self.first += 1;
            if let Some((ledger, _)) = &self.ledger {
                ledger.release(size);
            }
        }
        let cap = self.events.capacity();
        if cap > 4096 && self.events.len() < cap / 8 {
            // A burst's worth of slots is not kept for the shard's life.
            self.events.shrink_to(self.events.len() * 2);
        }
    }

    fn clear(&mut self) {
        self.first = self.next_index();
        if let Some((ledger, _)) = &self.ledger {
            ledger.release(self.bytes);
        }
        self.bytes = 0;
        self.events = VecDeque::new();
    }

    /// Drops the oldest dispatch if it is `index` (the ledger's eviction);
    /// returns its bytes, which the ledger takes off its total itself.
    fn evict_front(&mut self, index: u64) -> Option<usize> {
        if self.first != index || self.events.is_empty() {
            return None;
        }
        let old = self.events.pop_front()?;
        let size = old.heap_bytes();
        self.bytes -= size;
        self.first += 1;
        Some(size)
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

/// The replay memory of one core: every shard's buffer reports what it
/// keeps, and beyond the budget the core's oldest retained dispatches go.
#[derive(Debug)]
pub struct ReplayLedger {
    budget: usize,
    bytes: Cell<usize>,
    /// Retained dispatches in the order they were pushed: (buffer slot,
    /// index). Entries whose dispatch a buffer already dropped are skipped
    /// when they reach the front.
    order: RefCell<VecDeque<(u32, u64)>>,
    buffers: RefCell<Vec<Weak<RefCell<ReplayBuffer>>>>,
    evicted: Cell<u64>,
}

impl ReplayLedger {
    /// A ledger for `budget` bytes of payload.
    pub fn new(budget: usize) -> Rc<Self> {
        Rc::new(Self {
            budget,
            bytes: Cell::new(0),
            order: RefCell::default(),
            buffers: RefCell::default(),
            evicted: Cell::new(0),
        })
    }

    /// Makes `buffer` draw on this budget.
    pub fn register(self: &Rc<Self>, buffer: &Rc<RefCell<ReplayBuffer>>) {
        let mut buffers = self.buffers.borrow_mut();
        let slot = buffers.len() as u32;
        buffers.push(Rc::downgrade(buffer));
        buffer.borrow_mut().ledger = Some((self.clone(), slot));
    }

    fn add(&self, slot: u32, index: u64, size: usize) {
        self.bytes.set(self.bytes.get() + size);
        self.order.borrow_mut().push_back((slot, index));
    }

    fn release(&self, size: usize) {
        self.bytes.set(self.bytes.get().saturating_sub(size));
    }

    /// Whether the core keeps more than its budget.
    pub fn over_budget(&self) -> bool {
        self.bytes.get() > self.budget
    }

    /// Payload bytes retained by every shard of the core.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Dispatches dropped so far to stay within the budget.
    pub fn evicted(&self) -> u64 {
        self.evicted.get()
    }

    /// Drops the core's oldest retained dispatches until it is within its
    /// budget; returns how many were dropped. Call with no buffer borrowed.
    pub fn enforce(&self) -> u64 {
        let mut order = self.order.borrow_mut();
        let buffers = self.buffers.borrow();
        let mut dropped = 0;
        while let Some(&(slot, index)) = order.front() {
            let Some(buffer) = buffers.get(slot as usize).and_then(Weak::upgrade) else {
                order.pop_front();
                continue;
            };
            if buffer.borrow().first_index() > index {
                // Already dropped by its shard (no session needed it).
                order.pop_front();
                continue;
            }
            if self.bytes.get() <= self.budget {
                break;
            }
            if let Some(size) = buffer.borrow_mut().evict_front(index) {
                self.bytes.set(self.bytes.get().saturating_sub(size));
                dropped += 1;
            }
            order.pop_front();
        }
        let cap = order.capacity();
        let len = order.len();
        if cap > 4096 && len < cap / 8 {
            order.shrink_to(len * 2);
        }
        self.evicted.set(self.evicted.get() + dropped);
        dropped
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
        let size = d(0).heap_bytes();
        let mut b = ReplayBuffer::new(100, size * 3);
        for n in 0..10 {
            b.push(d(n));
        }
        assert_eq!((b.bytes(), b.len(), b.first_index()), (size * 3, 3, 7));
        let mut off = ReplayBuffer::new(0, 0);
        off.push(d(0));
        assert_eq!((off.len(), off.next_index()), (0, 1));
    }

    #[test]
    fn the_core_budget_drops_the_oldest_dispatch_of_any_shard() {
        let size = d(0).heap_bytes();
        let ledger = ReplayLedger::new(size * 5);
        let a = Rc::new(RefCell::new(ReplayBuffer::new(100, usize::MAX)));
        let b = Rc::new(RefCell::new(ReplayBuffer::new(100, usize::MAX)));
        ledger.register(&a);
        ledger.register(&b);
        // a0 a1 b0 b1 a2 b2: six dispatches for a budget of five.
        for (buf, n) in [(&a, 0), (&a, 1), (&b, 0), (&b, 1), (&a, 2), (&b, 2)] {
            buf.borrow_mut().push(d(n));
            ledger.enforce();
        }
        assert_eq!(ledger.evicted(), 1);
        assert_eq!((a.borrow().first_index(), b.borrow().first_index()), (1, 0), "a0 was the oldest");
        assert_eq!(ledger.bytes(), size * 5);
        // A shard trimming what no session needs frees budget, and its
        // stale entries do not count against the others.
        a.borrow_mut().trim_before(3);
        assert_eq!(ledger.bytes(), size * 3);
        for n in 3..5 {
            b.borrow_mut().push(d(n));
            ledger.enforce();
        }
        assert_eq!(ledger.evicted(), 1);
        b.borrow_mut().push(d(5));
        ledger.enforce();
        assert_eq!(ledger.evicted(), 2);
        assert_eq!(b.borrow().first_index(), 1, "b0 went next: a's trimmed entries were skipped");
        // Dropping everything (no session left) gives it all back.
        b.borrow_mut().push_unretained(d(6));
        assert_eq!(ledger.bytes(), 0);
    }

    #[test]
    fn restore_counts_against_the_budget() {
        let size = d(0).heap_bytes();
        let ledger = ReplayLedger::new(size * 2);
        let a = Rc::new(RefCell::new(ReplayBuffer::new(100, usize::MAX)));
        ledger.register(&a);
        a.borrow_mut().restore(40, (0..4).map(d).collect());
        assert_eq!((a.borrow().first_index(), a.borrow().next_index()), (40, 44));
        ledger.enforce();
        assert_eq!((a.borrow().first_index(), a.borrow().len()), (42, 2));
    }
}
