//! Worker slots and the FIFO queue in front of them.
//!
//! At most `workers` jobs hold a [`Slot`]; up to `capacity` more calls wait in FIFO order, each with a
//! [`Ticket`] that reports its 1-based position whenever it changes. A freed slot passes straight to the
//! head of the queue. Dropping a ticket (the call went away) leaves the queue at once and moves everyone
//! behind it up; dropping a slot frees it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, watch};

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AdmissionError {
    /// Every slot is busy and the queue is full.
    #[error("all {workers} workers are busy and the queue is full ({capacity} calls waiting); retry later")]
    QueueFull {
        /// Worker slots.
        workers: usize,
        /// Queue capacity.
        capacity: usize,
    },
    /// The server is draining.
    #[error("the server is shutting down")]
    Closed,
    /// As many calls as the pool holds (workers + queue) are uploading their input files already.
    #[error("{max} calls are uploading input files already (workers + queue); retry later")]
    TooManyUploads {
        /// The limit.
        max: usize,
    },
    /// `max_terminals` terminal jobs are queued or running already.
    #[error("{max} terminal jobs are queued or running, the server's limit (max_terminals); retry later")]
    TooManyTerminals {
        /// The limit.
        max: usize,
    },
}

/// The outcome of a successful admission.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A slot was free.
    Slot(Slot),
    /// The call waits in the queue.
    Queued(Ticket),
    /// The call uploads its input files first, holding neither a slot nor a queue place.
    Staging(Staging),
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Slot>,
    position: watch::Sender<u32>,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Calls uploading their input files.
    staging: usize,
    queue: VecDeque<Waiter>,
    next_id: u64,
    closed: bool,
}

/// The pool of worker slots.
pub(crate) struct Pool {
    state: Mutex<State>,
    /// Fired by [`Pool::close`]: staged uploads stop at once (their job could not start anyway).
    closed: tokio_util::sync::CancellationToken,
    workers: usize,
    capacity: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (running, queued) = self.occupancy();
        f.debug_struct("Pool").field("running", &running).field("queued", &queued).finish()
    }
}

impl Pool {
    /// A pool of `workers` slots with a queue of `capacity` waiting calls.
    pub(crate) fn new(workers: usize, capacity: usize) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State::default()),
            closed: tokio_util::sync::CancellationToken::new(),
            workers: workers.max(1),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Worker slots.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Queue capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// `(running, queued)` now.
    pub(crate) fn occupancy(&self) -> (usize, usize) {
        let state = self.lock();
        (state.running, state.queue.len())
    }

    /// Takes a slot, or a queue place, or refuses.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Admission, AdmissionError> {
        let mut state = self.lock();
        if state.closed {
            return Err(AdmissionError::Closed);
        }
        if state.running < self.workers && state.queue.is_empty() {
            state.running += 1;
            return Ok(Admission::Slot(Slot { pool: Arc::clone(self) }));
        }
        if state.queue.len() >= self.capacity {
            return Err(AdmissionError::QueueFull { workers: self.workers, capacity: self.capacity });
        }
        let id = state.next_id;
        state.next_id += 1;
        let (grant, granted) = oneshot::channel();
        let position = u32::try_from(state.queue.len() + 1).unwrap_or(u32::MAX);
        let (position, position_rx) = watch::channel(position);
        state.queue.push_back(Waiter { id, grant, position });
        Ok(Admission::Queued(Ticket { pool: Arc::clone(self), id, granted, position: position_rx }))
    }

    /// Admits a call that uploads input files before it may queue: at most `workers + capacity` at once (the
    /// number of calls the pool holds), so uploads are bounded too, but none holds a slot or a queue place,
    /// and a slow uploader delays nobody.
    pub(crate) fn admit_staging(self: &Arc<Self>) -> Result<Admission, AdmissionError> {
        let mut state = self.lock();
        if state.closed {
            return Err(AdmissionError::Closed);
        }
        let max = self.workers + self.capacity;
        if state.staging >= max {
            return Err(AdmissionError::TooManyUploads { max });
        }
        state.staging += 1;
        Ok(Admission::Staging(Staging { pool: Arc::clone(self) }))
    }

    /// Fired once the pool is closed (the server is draining).
    pub(crate) fn closed(&self) -> &tokio_util::sync::CancellationToken {
        &self.closed
    }

    /// Refuses new calls from now on and turns every queued call away (their tickets resolve to
    /// [`AdmissionError::Closed`]). Running jobs keep their slots.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.closed.cancel();
        // Dropping the grant senders wakes every waiter with an error.
        state.queue.clear();
    }

    /// Gives a freed slot to the head of the queue, or frees it.
    fn release(self: &Arc<Self>, state: &mut State) {
        match state.queue.pop_front() {
            Some(next) => {
                // The waiter's ticket is alive: a dropped ticket removes itself under this lock first.
                // If it is being dropped right now, its Drop finds itself granted and releases again.
                let _ = next.grant.send(Slot { pool: Arc::clone(self) });
                Self::renumber(state);
            }
            None => state.running -= 1,
        }
    }

    fn renumber(state: &State) {
        for (i, waiter) in state.queue.iter().enumerate() {
            let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
            waiter.position.send_if_modified(|p| std::mem::replace(p, position) != position);
        }
    }
}

/// A call uploading its input files (see [`Pool::admit_staging`]). Dropping it leaves the uploads' count.
pub(crate) struct Staging {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Staging")
    }
}

impl Staging {
    /// The upload is complete: the call is admitted like a new one (a slot, a queue place, or a refusal).
    pub(crate) fn admit(self) -> Result<Admission, AdmissionError> {
        let pool = Arc::clone(&self.pool);
        drop(self);
        pool.admit()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.pool.lock().staging -= 1;
    }
}

/// A worker slot. Dropping it frees the slot (or hands it to the next queued call).
pub(crate) struct Slot {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let pool = Arc::clone(&self.pool);
        let mut state = pool.lock();
        pool.release(&mut state);
    }
}

/// A place in the queue.
pub(crate) struct Ticket {
    pool: Arc<Pool>,
    id: u64,
    granted: oneshot::Receiver<Slot>,
    position: watch::Receiver<u32>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("position", &*self.position.borrow()).finish()
    }
}

impl Ticket {
    /// The current 1-based position (1 = next).
    pub(crate) fn position(&self) -> u32 {
        *self.position.borrow()
    }

    /// Waits for the next thing that happens to this place in the queue. Cancel-safe: a slot granted while
    /// this future is dropped stays with the ticket, and is freed if the ticket is dropped.
    pub(crate) async fn next_event(&mut self) -> QueueEvent {
        tokio::select! {
            biased;
            granted = &mut self.granted => return granted.map_or(QueueEvent::Closed, QueueEvent::Granted),
            changed = self.position.changed() => if changed.is_ok() {
                return QueueEvent::Moved(*self.position.borrow_and_update());
            },
        }
        // The position sender is gone: the waiter left the queue, so the grant (or its refusal) is due.
        (&mut self.granted).await.map_or(QueueEvent::Closed, QueueEvent::Granted)
    }
}

/// What happened to a queued call.
#[derive(Debug)]
pub(crate) enum QueueEvent {
    /// It got a slot.
    Granted(Slot),
    /// Its position changed (1 = next).
    Moved(u32),
    /// The pool closed (the server is draining).
    Closed,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if let Some(i) = state.queue.iter().position(|w| w.id == self.id) {
            state.queue.remove(i);
            Pool::renumber(&state);
        }
        // A slot granted but never taken is dropped here, after the lock is released, and so freed.
        drop(state);
        self.granted.close();
        drop(self.granted.try_recv());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_positions_and_refusal() {
        let pool = Pool::new(1, 2);
        let Ok(Admission::Slot(first)) = pool.admit() else { panic!("first call gets a slot") };
        let Ok(Admission::Queued(mut a)) = pool.admit() else { panic!("second call queues") };
        let Ok(Admission::Queued(mut b)) = pool.admit() else { panic!("third call queues") };
        assert_eq!((a.position(), b.position()), (1, 2));
        assert!(matches!(pool.admit(), Err(AdmissionError::QueueFull { workers: 1, capacity: 2 })));
        drop(first);
        let QueueEvent::Granted(slot_a) = a.next_event().await else { panic!("a is next") };
        assert!(matches!(b.next_event().await, QueueEvent::Moved(1)));
        drop(a);
        assert_eq!(pool.occupancy(), (1, 1));
        drop(slot_a);
        let QueueEvent::Granted(slot_b) = b.next_event().await else { panic!("b is next") };
        drop(slot_b);
        drop(b);
        assert_eq!(pool.occupancy(), (0, 0));
    }

    #[tokio::test]
    async fn a_ticket_dropped_after_its_grant_frees_the_slot() {
        let pool = Pool::new(1, 4);
        let Ok(Admission::Slot(first)) = pool.admit() else { panic!("slot") };
        let Ok(Admission::Queued(a)) = pool.admit() else { panic!("queued") };
        drop(first); // granted to `a`, which never takes it
        drop(a);
        assert_eq!(pool.occupancy(), (0, 0));
    }

    #[tokio::test]
    async fn leaving_the_queue_moves_others_up() {
        let pool = Pool::new(1, 4);
        let _slot = pool.admit();
        let Ok(Admission::Queued(a)) = pool.admit() else { panic!("queued") };
        let Ok(Admission::Queued(mut b)) = pool.admit() else { panic!("queued") };
        drop(a);
        assert!(matches!(b.next_event().await, QueueEvent::Moved(1)));
        pool.close();
        assert!(matches!(b.next_event().await, QueueEvent::Closed));
    }
}
