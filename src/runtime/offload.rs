//! Running blocking work (DNS) off the executor threads.
//!
//! The result comes back through a futures oneshot whose wake-up crosses
//! threads and reaches glommio through its foreign-wake path. The awaiting
//! task also polls the oneshot at a low rate, so that a missed wake-up, if
//! one ever happens, costs one poll period rather than a stalled shard.

use futures_channel::oneshot;
use std::time::Duration;

/// How often a waiting task checks for a result whose wake-up may have been lost.
pub const POLL: Duration = Duration::from_millis(20);

/// Awaits a oneshot filled by another thread; `None` if the sender was dropped.
pub async fn recv_across_threads<T>(mut rx: oneshot::Receiver<T>) -> Option<T> {
    loop {
        match rx.try_recv() {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(_) => return None,
        }
        futures_lite::future::or(
            async {
                let _ = (&mut rx).await;
            },
            glommio::timer::sleep(POLL),
        )
        .await;
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
