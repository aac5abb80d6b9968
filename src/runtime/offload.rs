//! Running blocking work (DNS) off the executor threads.
//!
//! The result comes back through a futures oneshot whose wake-up crosses
//! threads and reaches glommio through its foreign-wake path. The awaiting
//! task also polls the oneshot at a low rate, so that a missed wake-up, if
//! one ever happens, costs one poll period rather than a stalled shard.

use futures_channel::oneshot;
use std::time::Duration;

/// How often a waiting task checks for a result whose wake-up may have been lost.
pub const POLL: Duration = Duration::from_secs(1);

/// Awaits a oneshot filled by another thread; `None` if the sender was dropped.
pub async fn recv_across_threads<T>(mut rx: oneshot::Receiver<T>) -> Option<T> {
    loop {
        match rx.try_recv() {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(_) => return None,
        }
        let woken = futures_lite::future::or(async { Some((&mut rx).await) }, async {
            glommio::timer::sleep(POLL).await;
            None
        })
        .await;
        if let Some(result) = woken {
            return result.ok();
        }
    }
}

/// Runs `f` on a short-lived helper thread and awaits its result.
pub async fn run_blocking<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    recv_across_threads(rx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_whether_woken_or_polled() {
        glommio::LocalExecutor::default().run(async {
            assert_eq!(run_blocking("t", || 7).await, Some(7));
            let slow = run_blocking("t", || {
                std::thread::sleep(Duration::from_millis(60));
                8
            });
            assert_eq!(slow.await, Some(8));
            let (tx, rx) = oneshot::channel::<u8>();
            drop(tx);
            assert_eq!(recv_across_threads(rx).await, None);
        });
    }
}
