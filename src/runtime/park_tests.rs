//! The patched glommio park path (vendor/glommio-patched/PATCHES.md) keeps
//! its sleep timeout and ring link armed across sleeps and replaced
//! glommio's membarrier with fences. A parked executor must still wake for
//! everything that can concern it: a timer that became the earliest while
//! it slept, a wake from another thread, a socket, and a message from
//! another executor. A lost wake-up shows here as a wait that ends only at
//! the watchdog (far longer than any of these waits).

use futures_lite::AsyncReadExt;
use glommio::{timer::sleep, LocalExecutorBuilder, Placement};
use std::{
    io::Write,
    os::fd::{FromRawFd, IntoRawFd},
    time::{Duration, Instant},
};

/// How long a wait may take before it counts as lost (the waits are 5 to
/// 50 ms; a lost one lasts until the backstop timer of the test fires).
const WATCHDOG: Duration = Duration::from_secs(3);
/// A timer armed for the whole test, so that a lost wake-up still ends.
const BACKSTOP: Duration = Duration::from_secs(8);

async fn within_watchdog<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    let took = started.elapsed();
    assert!(took < WATCHDOG, "{what}: woke only after {took:?}");
    out
}

#[test]
fn a_parked_executor_wakes_for_timers_threads_sockets_and_other_executors() {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(|| async {
            // The executor sleeps with only a long timer armed and is woken
            // by another thread; a shorter timer created then must end the
            // next sleep, not the long one.
            let backstop = glommio::spawn_local(async { sleep(BACKSTOP).await });
            let (tx, rx) = futures_channel::oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let _ = tx.send(());
            });
            within_watchdog("a wake from another thread", rx).await.unwrap();
            within_watchdog("a timer earlier than the armed one", sleep(Duration::from_millis(50))).await;
            // The same deadline again (the sleep timeout is kept), then a later one.
            for _ in 0..3 {
                within_watchdog("a repeated timer", sleep(Duration::from_millis(10))).await;
            }
            drop(backstop);
            within_watchdog("a timer after the earliest was dropped", sleep(Duration::from_millis(50))).await;

            // Another thread completes a oneshot while the executor sleeps.
            for _ in 0..20 {
                let (tx, rx) = futures_channel::oneshot::channel::<u32>();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(5));
                    let _ = tx.send(7);
                });
                assert_eq!(within_watchdog("a wake from another thread", rx).await, Ok(7));
            }

            // A socket becomes readable while the executor sleeps.
            let (mine, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            // SAFETY: a fresh descriptor handed over to glommio.
            let mut mine = unsafe { glommio::net::UnixStream::from_raw_fd(mine.into_raw_fd()) };
            std::thread::spawn(move || {
                for i in 0..10u8 {
                    std::thread::sleep(Duration::from_millis(5));
                    theirs.write_all(&[i]).unwrap();
                }
            });
            let mut got = Vec::new();
            while got.len() < 10 {
                let mut buf = [0u8; 16];
                let n = within_watchdog("a readable socket", mine.read(&mut buf)).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, (0..10).collect::<Vec<u8>>());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_parked_executor_wakes_for_a_message_from_another_executor() {
    use glommio::channels::channel_mesh::MeshBuilder;
    let mesh: MeshBuilder<u32, _> = MeshBuilder::full(2, 16);
    let sender = {
        let mesh = mesh.clone();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let (senders, _receivers) = mesh.join().await.unwrap();
                let peer = 1 - senders.peer_id();
                for i in 0..20 {
                    // The receiver is parked by the time each message goes out.
                    sleep(Duration::from_millis(5)).await;
                    senders.send_to(peer, i).await.unwrap();
                }
            })
            .unwrap()
    };
    let receiver = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let _backstop = glommio::spawn_local(async { sleep(BACKSTOP).await });
            let (_senders, mut receivers) = mesh.join().await.unwrap();
            let (_, stream) = receivers.streams().pop().unwrap();
            for i in 0..20 {
                assert_eq!(within_watchdog("a message from another executor", stream.recv()).await, Some(i));
            }
        })
        .unwrap();
    sender.join().unwrap();
    receiver.join().unwrap();
}

#[test]
fn a_task_that_never_blocks_does_not_starve_timers() {
    // glommio preempts a task queue after its budget (100 ms): the patched
    // park path checks that budget in user space, not with a timeout in
    // the latency ring. A timer must still fire while another task keeps
    // yielding without ever blocking.
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(|| async {
            let done = std::rc::Rc::new(std::cell::Cell::new(false));
            let started = Instant::now();
            let spinner = {
                let done = done.clone();
                glommio::spawn_local(async move {
                    // Gives up after a while, so a starved timer fails the test instead of hanging it.
                    while !done.get() && started.elapsed() < Duration::from_secs(5) {
                        futures_lite::future::yield_now().await;
                    }
                })
            };
            sleep(Duration::from_millis(50)).await;
            let took = started.elapsed();
            done.set(true);
            spinner.await;
            assert!(took < Duration::from_secs(2), "the timer fired after {took:?}");
        })
        .unwrap()
        .join()
        .unwrap();
}
