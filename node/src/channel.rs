//! Bounded channels into the agent loop, with the two ways a sender can meet a full one.
//!
//! Every queue between a task and the loop has a capacity, so a loop that falls behind costs
//! a bounded amount of memory. What a sender does when the queue is full is its choice, per
//! message:
//!
//! - [`Sender::send`] waits for room (back-pressure). For senders that may wait (spawned tasks,
//!   runtimes, probers) and for anything whose loss nobody recovers: a lost exit would leave
//!   the core believing a replica still runs; a lost answer that a caller's reply rides on
//!   would leave the CLI waiting forever.
//! - [`Sender::try_send`] drops the message when there is no room (drop-and-count). For senders
//!   that must not block (the loop itself, a socket reader), and only for messages whose loss is
//!   recovered elsewhere (a sync answer: the sync machine times its requests out).
//!
//! Both are counted per channel ([`ChannelCounts`]): `starling_channel_full_total` (a sender
//! found the queue full and waited) and `starling_channel_dropped_total` (a message was
//! dropped), so an operator sees a loop that cannot keep up before anything is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc::{self, error::TrySendError};

/// How often senders met a full channel.
#[derive(Debug, Default)]
pub struct ChannelCounts {
    /// Sends that found the channel full and waited for room.
    pub full_waits: AtomicU64,
    /// Messages dropped because the channel was full.
    pub dropped: AtomicU64,
}

/// The sending half of a bounded channel that counts its full moments. Cheap to clone.
#[derive(Debug)]
pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    counts: Arc<ChannelCounts>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// A channel of at most `capacity` messages whose full moments count into `counts`.
pub fn bounded<T>(capacity: usize, counts: Arc<ChannelCounts>) -> (Sender<T>, mpsc::Receiver<T>) {
    // A zero capacity would make tokio panic; every caller passes a named constant.
    assert!(capacity > 0, "a channel needs room for one message");
    let (tx, rx) = mpsc::channel(capacity);
    (Sender { tx, counts }, rx)
}

impl<T> Sender<T> {
    /// Sends `value`, waiting while the channel is full (a wait is counted once). Returns
    /// false when the receiver is gone (the agent is stopping): nothing is waiting for it.
    pub async fn send(&self, value: T) -> bool {
        match self.tx.try_send(value) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(value)) => {
                self.counts.full_waits.fetch_add(1, Ordering::Relaxed);
                self.tx.send(value).await.is_ok()
            }
        }
    }

    /// Sends `value` if there is room now; otherwise drops it and counts the drop. Returns
    /// whether it was queued. Only for messages whose loss something else recovers.
    pub fn try_send(&self, value: T) -> bool {
        match self.tx.try_send(value) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The counts of this channel.
    pub fn counts(&self) -> &Arc<ChannelCounts> {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_channel_drops_and_counts_on_try_send() {
        let counts = Arc::new(ChannelCounts::default());
        let (tx, mut rx) = bounded::<u32>(2, counts.clone());
        assert!(tx.try_send(1));
        assert!(tx.try_send(2));
        assert!(!tx.try_send(3), "no room: dropped");
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(rx.recv().await, Some(1));
        assert!(tx.try_send(4), "room again once one was taken");
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(4), "the dropped one never arrives");
        assert_eq!(counts.full_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_full_channel_makes_send_wait_and_loses_nothing() {
        let counts = Arc::new(ChannelCounts::default());
        let (tx, mut rx) = bounded::<u32>(1, counts.clone());
        assert!(tx.send(1).await);
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        // The second send cannot finish before the loop takes the first message.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a full channel makes the sender wait"
        );
        assert_eq!(counts.full_waits.load(Ordering::Relaxed), 1);
        assert_eq!(rx.recv().await, Some(1));
        assert!(
            waiting.await.expect("task"),
            "delivered once there was room"
        );
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_closed_channel_refuses_without_counting() {
        let counts = Arc::new(ChannelCounts::default());
        let (tx, rx) = bounded::<u32>(1, counts.clone());
        drop(rx);
        assert!(!tx.send(1).await);
        assert!(!tx.try_send(2));
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(counts.full_waits.load(Ordering::Relaxed), 0);
    }
}
